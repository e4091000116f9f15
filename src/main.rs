//! The `presence-server` binary: `serve` (the default) and `token`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use presence_server::auth::Authenticator;
use presence_server::presence::UserId;
use presence_server::{telemetry, Application, Settings};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "The Presence API v1 server: who is online, and where."
)]
struct Cli {
    /// Configuration file; `PRESENCE__SECTION__KEY` environment variables override it.
    #[arg(
        long,
        global = true,
        default_value = "config.toml",
        value_name = "PATH"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the API (the default).
    Serve,
    /// Print a credential (JWT) for a user, signed with the configured secret.
    Token {
        /// The user the credential speaks for.
        #[arg(long, value_name = "N")]
        user_id: u64,
        /// How long the credential is valid, such as `30m`, `1h` or `7d`.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = Settings::load(&cli.config)
        .map_err(anyhow::Error::from)
        .and_then(|settings| {
            telemetry::init(settings.logging.format);
            match cli.command.unwrap_or(Command::Serve) {
                Command::Serve => serve(settings, &cli.config),
                Command::Token { user_id, ttl } => token(&settings, user_id, ttl),
            }
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn token(settings: &Settings, user_id: u64, ttl: Duration) -> anyhow::Result<()> {
    let user = UserId::new(user_id).context("--user-id must be a positive int64")?;
    let jwt = Authenticator::new(&settings.auth.jwt_secret).mint(user, ttl)?;
    println!("{jwt}");
    Ok(())
}

fn serve(settings: Settings, config: &std::path::Path) -> anyhow::Result<()> {
    actix_web::rt::System::new().block_on(async move {
        if settings.uses_development_secret() {
            tracing::warn!(
                "auth.jwt_secret is the shipped development value: anyone can mint credentials; \
                 set PRESENCE__AUTH__JWT_SECRET or auth.jwt_secret before deploying"
            );
        }
        presence_server::connections::raise_open_files_limit();
        let mut signals = ShutdownSignals::install()?;
        let app = Application::build(settings)?;
        tracing::info!(address = %app.local_addr(), config = %config.display(), "presence-server listening");
        let shutdown = app.shutdown();
        actix_web::rt::spawn(async move {
            signals.recv().await;
            tracing::info!(
                "shutting down: finishing in-flight requests (a second signal stops at once)"
            );
            actix_web::rt::spawn(shutdown.begin());
            let second = signals.recv().await;
            tracing::warn!(
                signal = second.name(),
                "second signal: stopping at once, without finishing requests or writing a \
                 last snapshot"
            );
            std::process::exit(second.exit_code());
        });
        app.run_until_stopped().await?;
        tracing::info!("stopped");
        Ok(())
    })
}

/// Ctrl-C (SIGINT) and SIGTERM, listened for from creation on, so that a signal sent as
/// soon as the server says it is listening is never missed.
struct ShutdownSignals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    fn install() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                interrupt: signal(SignalKind::interrupt()).context("listening for SIGINT")?,
                terminate: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Self {})
        }
    }

    /// Waits for the next signal and says which it was.
    async fn recv(&mut self) -> Received {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => Received::Interrupt,
                _ = self.terminate.recv() => Received::Terminate,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Received::Interrupt
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Received {
    Interrupt,
    Terminate,
}

impl Received {
    fn name(self) -> &'static str {
        match self {
            Self::Interrupt => "SIGINT",
            Self::Terminate => "SIGTERM",
        }
    }

    /// The shell's convention for a process ended by a signal: 128 + its number.
    fn exit_code(self) -> i32 {
        match self {
            Self::Interrupt => 130,
            Self::Terminate => 143,
        }
    }
}
