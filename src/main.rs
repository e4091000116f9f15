//! The `presence-server` binary: `serve` (the default), `token` and `service-key`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use clap::{Parser, Subcommand};
use presence_server::auth::{sha256_hex, Authenticator};
use presence_server::config::{check_service_key, ServiceKeySettings};
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
    /// Make a new random service key (for `x-api-key`) and print it, once, with its
    /// `[[auth.service_keys]]` block. Reads no configuration.
    ServiceKey {
        /// The key's name, shown in logs: 1 to 64 characters.
        #[arg(long, value_name = "NAME")]
        name: String,
        /// What the key may do: `game-servers`, `privacy` or `read`; repeat for several.
        #[arg(long = "scope", value_name = "SCOPE", required = true)]
        scopes: Vec<String>,
    },
}

/// Random bytes in a service key: 256 bits.
const SERVICE_KEY_BYTES: usize = 32;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => load(&cli.config).and_then(|settings| serve(settings, &cli.config)),
        Command::Token { user_id, ttl } => {
            load(&cli.config).and_then(|settings| token(&settings, user_id, ttl))
        }
        Command::ServiceKey { name, scopes } => service_key(&name, &scopes),
    };
    exit(result)
}

/// The settings, validated, and logging set up by them.
fn load(config: &std::path::Path) -> anyhow::Result<Settings> {
    let settings = Settings::load(config)?;
    telemetry::init(settings.logging.format);
    Ok(settings)
}

fn exit(result: anyhow::Result<()>) -> ExitCode {
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

/// A new key of [`SERVICE_KEY_BYTES`] from the OS's generator, URL-safe base64 without
/// padding, printed once with the configuration block that holds only its SHA-256.
fn service_key(name: &str, scopes: &[String]) -> anyhow::Result<()> {
    let mut scopes_once: Vec<String> = Vec::with_capacity(scopes.len());
    for scope in scopes {
        if !scopes_once.contains(scope) {
            scopes_once.push(scope.clone());
        }
    }
    let mut bytes = [0u8; SERVICE_KEY_BYTES];
    getrandom::fill(&mut bytes)
        .map_err(|e| anyhow::anyhow!("the OS's random generator failed: {e}"))?;
    let key = URL_SAFE_NO_PAD.encode(bytes);
    let entry = ServiceKeySettings {
        name: name.to_owned(),
        sha256: sha256_hex(&key),
        scopes: scopes_once,
    };
    // The rules of the configuration file, so that the block printed is accepted there.
    check_service_key(&entry).map_err(|problem| anyhow::anyhow!("service-key: {problem}"))?;
    // A JSON string is a TOML basic string as long as it has no control characters, which
    // the name may not have.
    let quote = |text: &str| serde_json::Value::from(text).to_string();
    let scopes = entry
        .scopes
        .iter()
        .map(|scope| quote(scope))
        .collect::<Vec<_>>()
        .join(", ");
    println!(
        "The new key for {}, shown only this once (only its SHA-256 is kept); send it as the \
         x-api-key header:",
        quote(&entry.name)
    );
    println!("{key}");
    println!();
    println!("Add this to the configuration file:");
    println!();
    println!("[[auth.service_keys]]");
    println!("name = {}", quote(&entry.name));
    println!("sha256 = \"{}\"", entry.sha256);
    println!("scopes = [{scopes}]");
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
