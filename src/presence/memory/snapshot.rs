//! Snapshots: the whole store written to one file, atomically, and read back at start-up.
//!
//! # Format (version 3, little-endian; versions 1 and 2 are read too)
//!
//! ```text
//! header   b"PRESNAP\n", version: u32, written_at: i64 (Unix ms)
//! user     1u8, user_id: u64, last_online: i64, location_len: u32, location (UTF-8),
//!          kind: u8 (0 no app session, 1 Online, 2 InGame, 3 InStudio), and unless 0:
//!          deadline: i64 (Unix ms), has_place: u8 [place_id: i64, root_place_id: i64,
//!          universe_id: i64 (0 = none)], has_game: u8 [game_id: 16 bytes];
//!          then (version 2) games: u8, each: game_id: 16 bytes, place_id: i64,
//!          root_place_id: i64, universe_id: i64, location_len: u32, location,
//!          joined: u32, deadline: i64 (Unix ms)
//! server   2u8 (version 2), game_id: 16 bytes, place_id: i64, root_place_id: i64,
//!          universe_id: i64, location_len: u32, location, deadline: i64 (Unix ms),
//!          players: u32, each user_id: u64
//! settings 3u8 (version 3), user_id: u64, visibility: u8 (0 everyone, 1 friends,
//!          2 nobody), flags: u8 (bit 0 invisible, bit 1 with an end time, bit 2 with a
//!          frozen lastOnline), until: i64, last_online: i64 (Unix ms; 0 when the flag
//!          is clear)
//! friends  4u8 (version 3), pairs: u32, each user_id: u64, user_id: u64 (lower first)
//! end      0u8, users: u64, crc32: u32 (of every byte before it)
//! ```
//!
//! Version 1 (written before game servers) is version 2 without games and servers; version
//! 2 (written before privacy settings) is version 3 without settings and friendships.
//! `users` counts the user records only.
//!
//! A user's settings record, when its settings are not the default ones, follows its user
//! record; a user never seen (or forgotten) that holds settings has a settings record
//! alone. Friendships come last, in records of at most `FRIEND_BATCH` pairs, and are put
//! back under `privacy.max_friends`: pairs past it (the bound was lowered since) are left
//! out and logged.
//!
//! A file is written beside its final path, fsynced, renamed over it, and the folder is
//! fsynced: a crash leaves the previous snapshot or the new one, never a torn file. A
//! file that is corrupt, truncated or of another version is refused, never overwritten.
//!
//! One process at a time owns a snapshot path: [`lock`] takes an exclusive lock on
//! `<path>.lock` (and writes its pid there) for as long as the returned [`SnapshotLock`]
//! lives, so a second server on the same path stops at start-up instead of writing the same
//! temporary file. Only a regular file is read: a FIFO or a device is refused before any
//! read, and a read never goes past the file's size.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, Write};
use std::num::NonZeroI64;
use std::path::{Path, PathBuf};
use std::time::Instant;

use uuid::Uuid;

use super::store::Saving;
use crate::presence::model::{PlaceInfo, SavedGame, SavedServer, SavedSession, SavedUser, Session};
use crate::presence::privacy::{FriendPair, Invisibility, Settings, Visibility};
use crate::presence::time::WallMillis;
use crate::presence::{Now, PresenceType, Store, UserId};

const MAGIC: &[u8; 8] = b"PRESNAP\n";
pub const VERSION: u32 = 3;
/// The oldest version this build still reads.
const FIRST_VERSION: u32 = 1;
const USER_TAG: u8 = 1;
const SERVER_TAG: u8 = 2;
const SETTINGS_TAG: u8 = 3;
const FRIENDS_TAG: u8 = 4;
const END_TAG: u8 = 0;
/// In a settings record's flags.
const FLAG_INVISIBLE: u8 = 1;
const FLAG_UNTIL: u8 = 2;
const FLAG_FROZEN: u8 = 4;
/// Friendships per friends record, written and put back at a time.
const FRIEND_BATCH: usize = 4096;
/// Users read from the store per batch while writing: each is one short read lock.
const WRITE_BATCH: usize = 1024;

/// Why a snapshot path could not be locked; the message names the path and the holder.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "persistence.path {path} is in use by another presence-server ({holder}, holding \
         {lock}); stop that server first, or give this one another persistence.path"
    )]
    Held {
        path: PathBuf,
        lock: PathBuf,
        holder: String,
    },
    #[error("cannot lock persistence.path {path} through {lock}: {source}")]
    Io {
        path: PathBuf,
        lock: PathBuf,
        source: io::Error,
    },
}

/// The exclusive hold on a snapshot path: `<path>.lock` stays locked until this is dropped
/// (or the process ends, however it ends). The lock file itself is left in place: removing
/// it would let a third process lock a new file while a second still waits on the old one.
#[derive(Debug)]
pub struct SnapshotLock {
    _file: File,
    path: PathBuf,
}

impl SnapshotLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Takes the exclusive lock of the snapshot at `path`, creating its folder and lock file
/// if needed, and writes this process's id into the lock file. Never waits: when another
/// process holds the lock, the error names it by the pid it wrote.
pub fn lock(path: &Path) -> Result<SnapshotLock, LockError> {
    let lock = sibling(path, ".lock");
    let io_error = |source| LockError::Io {
        path: path.to_owned(),
        lock: lock.clone(),
        source,
    };
    if let Some(dir) = parent(path) {
        fs::create_dir_all(dir).map_err(io_error)?;
    }
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    let mut file = open_without_blocking(&mut options, &lock).map_err(io_error)?;
    let file_type = file.metadata().map_err(io_error)?.file_type();
    if !file_type.is_file() {
        let problem = format!("it is {}, not a regular file", describe(file_type));
        return Err(io_error(io::Error::other(problem)));
    }
    match fs4::FileExt::try_lock(&file) {
        Ok(()) => {}
        Err(fs4::TryLockError::WouldBlock) => {
            return Err(LockError::Held {
                path: path.to_owned(),
                holder: holder(&mut file),
                lock,
            })
        }
        Err(fs4::TryLockError::Error(source)) => return Err(io_error(source)),
    }
    let pid = format!("{}\n", std::process::id());
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| file.write_all(pid.as_bytes()))
        .map_err(io_error)?;
    Ok(SnapshotLock {
        _file: file,
        path: lock,
    })
}

/// Who holds a lock file, as its holder wrote it: `pid N`, or a note that it is unknown
/// (the holder has locked the file but not written its pid yet).
fn holder(file: &mut File) -> String {
    let mut text = String::new();
    let read = file.take(32).read_to_string(&mut text);
    match read.ok().and_then(|_| text.trim().parse::<u32>().ok()) {
        Some(pid) => format!("pid {pid}"),
        None => "pid not known yet".into(),
    }
}

/// Why a snapshot could not be read; the message names the file.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot read snapshot {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "snapshot {path} is not usable: {problem}. It was left untouched; to start anyway, \
         move it aside (the server then starts empty) or set persistence.path to another file"
    )]
    Invalid { path: PathBuf, problem: String },
}

/// What a write or a load did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SnapshotStats {
    /// Users written, or restored.
    pub users: u64,
    /// On a load: users in the file not restored, being Offline past
    /// `presence.offline_retention` already.
    pub forgotten: u64,
    /// Users whose settings were written, or read (seen or not).
    pub settings: u64,
    /// Friendships written, or restored.
    pub friendships: u64,
    /// On a load: friendships in the file not restored, past `privacy.max_friends`.
    pub friendships_skipped: u64,
    pub bytes: u64,
    pub seconds: f64,
}

/// Creates the snapshot's folder and proves that a file can be written there, so that a
/// bad `persistence.path` stops start-up instead of failing later. Call it with the path's
/// [`lock`] held: it writes the temporary file that snapshots are written to.
pub fn prepare(path: &Path) -> io::Result<()> {
    if let Some(dir) = parent(path) {
        fs::create_dir_all(dir)?;
    }
    let probe = temporary_path(path);
    create_temporary(&probe)?;
    fs::remove_file(&probe)
}

/// Creates `temporary` afresh. Whatever was there (a file left by a crash, or anything
/// else) is removed first and never opened: opening a FIFO to write to it would wait for
/// a reader, and a symbolic link would be followed.
fn create_temporary(temporary: &Path) -> io::Result<File> {
    match fs::remove_file(temporary) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(temporary)
}

/// Opens `path` without waiting on it: on Unix a FIFO opens at once (rather than when a
/// writer comes), so that the caller can see what it is and refuse it.
fn open_without_blocking(options: &mut OpenOptions, path: &Path) -> io::Result<File> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.custom_flags(libc::O_NONBLOCK);
    }
    options.open(path)
}

/// What kind of file something that is not a regular file is, for a message.
fn describe(file_type: fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt as _;
        if file_type.is_fifo() {
            return "a FIFO";
        }
        if file_type.is_char_device() {
            return "a character device";
        }
        if file_type.is_block_device() {
            return "a block device";
        }
        if file_type.is_socket() {
            return "a socket";
        }
    }
    if file_type.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

/// Writes every user of `store` to `path`, atomically.
pub fn write(store: &Store, path: &Path, now: Now) -> io::Result<SnapshotStats> {
    let started = Instant::now();
    let temporary = temporary_path(path);
    let result = write_to(store, &temporary, now).and_then(|stats| {
        fs::rename(&temporary, path)?;
        if let Some(dir) = parent(path) {
            File::open(dir)?.sync_all()?;
        }
        Ok(stats)
    });
    if result.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    result.map(|written| SnapshotStats {
        users: written.users,
        forgotten: 0,
        settings: written.settings,
        friendships: written.friendships,
        friendships_skipped: 0,
        bytes: written.bytes,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// What `write_to` wrote.
struct Written {
    users: u64,
    settings: u64,
    friendships: u64,
    bytes: u64,
}

fn write_to(store: &Store, temporary: &Path, now: Now) -> io::Result<Written> {
    let file = create_temporary(temporary)?;
    let mut out = Encoder {
        out: BufWriter::with_capacity(1 << 20, file),
        crc: crc32fast::Hasher::new(),
        bytes: 0,
        failed: None,
    };
    out.put(MAGIC);
    out.put(&VERSION.to_le_bytes());
    out.put(&now.wall.0.to_le_bytes());
    let mut users = 0u64;
    let mut settings = 0u64;
    for batch in store.user_ids().chunks(WRITE_BATCH) {
        // Runs with no lock of the store held (see `Store::save_many`).
        store.save_many(batch, now, |saving| match saving {
            Saving::User(user) => {
                users += 1;
                encode_user(&mut out, user);
            }
            Saving::Settings(user, saved) => {
                settings += 1;
                encode_settings(&mut out, user, saved);
            }
        });
        if let Some(e) = out.failed.take() {
            return Err(e);
        }
    }
    store.save_servers(now, |server| encode_server(&mut out, server));
    // Runs with no lock of the table held (see `Friendships::for_each_pair`).
    let mut pairs = Vec::with_capacity(FRIEND_BATCH);
    let mut friendships = 0u64;
    store.friendships().for_each_pair(|a, b| {
        pairs.push((a, b));
        if pairs.len() == FRIEND_BATCH {
            friendships += encode_friends(&mut out, &pairs);
            pairs.clear();
        }
    });
    friendships += encode_friends(&mut out, &pairs);
    out.put(&[END_TAG]);
    out.put(&users.to_le_bytes());
    let crc = out.crc.clone().finalize();
    out.put(&crc.to_le_bytes());
    if let Some(e) = out.failed.take() {
        return Err(e);
    }
    let file = out.out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(Written {
        users,
        settings,
        friendships,
        bytes: out.bytes,
    })
}

/// Bytes to a buffered file and to the checksum; remembers the first write error.
struct Encoder<W: Write> {
    out: W,
    crc: crc32fast::Hasher,
    bytes: u64,
    failed: Option<io::Error>,
}

impl<W: Write> Encoder<W> {
    fn put(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        self.crc.update(bytes);
        self.bytes += bytes.len() as u64;
        if let Err(e) = self.out.write_all(bytes) {
            self.failed = Some(e);
        }
    }
}

fn encode_user<W: Write>(out: &mut Encoder<W>, user: &SavedUser<'_>) {
    out.put(&[USER_TAG]);
    out.put(&user.user_id.get().to_le_bytes());
    out.put(&user.last_online.0.to_le_bytes());
    let location = user.last_location.as_bytes();
    out.put(&(location.len() as u32).to_le_bytes());
    out.put(location);
    match &user.live {
        Some(live) => encode_session(out, live),
        None => out.put(&[PresenceType::Offline.as_int()]),
    }
    // At most `presence.max_game_sessions` (16 at most).
    out.put(&[user.games.len().min(usize::from(u8::MAX)) as u8]);
    for game in user.games.iter().take(usize::from(u8::MAX)) {
        out.put(game.game.as_bytes());
        encode_place(out, &game.place, &game.location);
        out.put(&game.joined.to_le_bytes());
        out.put(&game.deadline.0.to_le_bytes());
    }
}

fn encode_settings<W: Write>(out: &mut Encoder<W>, user: UserId, settings: Settings) {
    out.put(&[SETTINGS_TAG]);
    out.put(&user.get().to_le_bytes());
    let visibility = match settings.visibility() {
        Visibility::Everyone => 0,
        Visibility::Friends => 1,
        Visibility::Nobody => 2,
    };
    let invisibility = settings.invisibility();
    let until = invisibility.and_then(|i| i.until);
    let last_online = invisibility.and_then(|i| i.last_online);
    let flag = |set: bool, flag: u8| if set { flag } else { 0 };
    let flags = flag(invisibility.is_some(), FLAG_INVISIBLE)
        | flag(until.is_some(), FLAG_UNTIL)
        | flag(last_online.is_some(), FLAG_FROZEN);
    out.put(&[visibility, flags]);
    out.put(&until.map_or(0, |t| t.0).to_le_bytes());
    out.put(&last_online.map_or(0, |t| t.0).to_le_bytes());
}

/// Writes one friends record of `pairs` (none for no pairs); returns how many.
fn encode_friends<W: Write>(out: &mut Encoder<W>, pairs: &[(UserId, UserId)]) -> u64 {
    if pairs.is_empty() {
        return 0;
    }
    out.put(&[FRIENDS_TAG]);
    // At most `FRIEND_BATCH`.
    out.put(&(pairs.len() as u32).to_le_bytes());
    for (a, b) in pairs {
        out.put(&a.get().to_le_bytes());
        out.put(&b.get().to_le_bytes());
    }
    pairs.len() as u64
}

fn encode_place<W: Write>(out: &mut Encoder<W>, place: &PlaceInfo, location: &str) {
    out.put(&place.place_id.to_le_bytes());
    out.put(&place.root_place_id.to_le_bytes());
    out.put(&place.universe_id.map_or(0, NonZeroI64::get).to_le_bytes());
    out.put(&(location.len() as u32).to_le_bytes());
    out.put(location.as_bytes());
}

fn encode_server<W: Write>(out: &mut Encoder<W>, server: &SavedServer<'_>) {
    out.put(&[SERVER_TAG]);
    out.put(server.game.as_bytes());
    encode_place(out, &server.place, &server.location);
    out.put(&server.deadline.0.to_le_bytes());
    out.put(&(server.players.len() as u32).to_le_bytes());
    for player in &server.players {
        out.put(&player.get().to_le_bytes());
    }
}

fn encode_session<W: Write>(out: &mut Encoder<W>, live: &SavedSession) {
    out.put(&[live.session.kind.as_int()]);
    out.put(&live.deadline.0.to_le_bytes());
    match live.session.place {
        Some(place) => {
            out.put(&[1]);
            out.put(&place.place_id.to_le_bytes());
            out.put(&place.root_place_id.to_le_bytes());
            out.put(&place.universe_id.map_or(0, NonZeroI64::get).to_le_bytes());
        }
        None => out.put(&[0]),
    }
    match live.session.game_id {
        Some(game) => {
            out.put(&[1]);
            out.put(game.as_bytes());
        }
        None => out.put(&[0]),
    }
}

/// Loads `path` into `store` as of `now`. `Ok(None)` when there is no file yet.
///
/// Only a regular file is read, and never past the size it had when opened: a FIFO, a
/// device, a socket or a directory is refused without reading a byte.
pub fn load(store: &Store, path: &Path, now: Now) -> Result<Option<SnapshotStats>, SnapshotError> {
    let started = Instant::now();
    let io_error = |source| SnapshotError::Io {
        path: path.to_owned(),
        source,
    };
    let invalid = |problem: String| SnapshotError::Invalid {
        path: path.to_owned(),
        problem,
    };
    let file = match open_without_blocking(OpenOptions::new().read(true), path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(io_error(source)),
    };
    let metadata = file.metadata().map_err(io_error)?;
    if !metadata.is_file() {
        let kind = describe(metadata.file_type());
        return Err(invalid(format!("it is {kind}, not a regular file")));
    }
    let len = metadata.len();
    let capacity = usize::try_from(len)
        .map_err(|_| invalid(format!("it is too large to read ({len} bytes)")))?;
    let mut bytes = Vec::with_capacity(capacity);
    file.take(len).read_to_end(&mut bytes).map_err(io_error)?;
    let mut restored = 0u64;
    let mut settings = 0u64;
    let mut friendships = 0u64;
    let mut skipped = 0u64;
    let users = decode(&bytes, |saved| match saved {
        Saved::User(user) => restored += u64::from(store.restore(user, now)),
        Saved::Server(server) => {
            store.restore_server(server, now);
        }
        Saved::Settings(user, saved) => {
            settings += 1;
            store.restore_settings(user, saved, now);
        }
        Saved::Friends(pairs) => {
            friendships += pairs.len() as u64;
            let left_out = store.restore_friendships(pairs).len() as u64;
            friendships -= left_out;
            skipped += left_out;
        }
    })
    .map_err(invalid)?;
    if skipped > 0 {
        tracing::warn!(
            path = %path.display(),
            skipped,
            max_friends = store.friendships().max_friends(),
            "friendships in the snapshot past privacy.max_friends were not restored"
        );
    }
    Ok(Some(SnapshotStats {
        users: restored,
        forgotten: users.saturating_sub(restored),
        settings,
        friendships,
        friendships_skipped: skipped,
        bytes: bytes.len() as u64,
        seconds: started.elapsed().as_secs_f64(),
    }))
}

/// One record of a snapshot.
enum Saved<'a> {
    User(SavedUser<'a>),
    Server(SavedServer<'a>),
    Settings(UserId, Settings),
    Friends(Vec<FriendPair>),
}

/// Checks the whole file first (magic, version, checksum), then hands each record to
/// `restore`. Returns how many users it held.
fn decode(bytes: &[u8], mut restore: impl FnMut(Saved<'_>)) -> Result<u64, String> {
    if bytes.len() < MAGIC.len() + 4 || &bytes[..MAGIC.len()] != MAGIC {
        return Err("it is not a presence snapshot (wrong magic bytes)".into());
    }
    let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if !(FIRST_VERSION..=VERSION).contains(&version) {
        return Err(format!(
            "it has format version {version}, and this build reads versions \
             {FIRST_VERSION} to {VERSION}"
        ));
    }
    let Some(body_len) = bytes.len().checked_sub(4) else {
        return Err("it is truncated".into());
    };
    let mut stored = [0u8; 4];
    stored.copy_from_slice(&bytes[body_len..]);
    if crc32fast::hash(&bytes[..body_len]) != u32::from_le_bytes(stored) {
        return Err("its checksum does not match: it is truncated or corrupt".into());
    }
    let mut r = Reader {
        bytes: &bytes[..body_len],
        at: MAGIC.len() + 4 + 8,
    };
    let mut users = 0u64;
    loop {
        match r.u8()? {
            USER_TAG => {
                restore(Saved::User(decode_user(&mut r, version)?));
                users += 1;
            }
            SERVER_TAG if version >= 2 => restore(Saved::Server(decode_server(&mut r)?)),
            SETTINGS_TAG if version >= 3 => {
                let (user, settings) = decode_settings(&mut r)?;
                restore(Saved::Settings(user, settings));
            }
            FRIENDS_TAG if version >= 3 => restore(Saved::Friends(decode_friends(&mut r)?)),
            END_TAG => break,
            tag => return Err(format!("unknown record tag {tag} at byte {}", r.at - 1)),
        }
    }
    let declared = r.u64()?;
    if declared != users || r.at != r.bytes.len() {
        return Err(format!("it declares {declared} users but holds {users}"));
    }
    Ok(users)
}

fn decode_place<'a>(r: &mut Reader<'a>) -> Result<(PlaceInfo, &'a str), String> {
    let place = PlaceInfo {
        place_id: r.i64()?,
        root_place_id: r.i64()?,
        universe_id: NonZeroI64::new(r.i64()?),
    };
    let len = r.u32()? as usize;
    let location =
        std::str::from_utf8(r.take(len)?).map_err(|_| "a location that is not UTF-8".to_owned())?;
    Ok((place, location))
}

fn decode_uuid(r: &mut Reader<'_>) -> Result<Uuid, String> {
    Uuid::from_slice(r.take(16)?).map_err(|e| e.to_string())
}

fn decode_server<'a>(r: &mut Reader<'a>) -> Result<SavedServer<'a>, String> {
    let game = decode_uuid(r)?;
    let (place, location) = decode_place(r)?;
    let deadline = WallMillis(r.i64()?);
    let count = r.u32()? as usize;
    // Each player is 8 bytes: a count past the end is refused before any allocation.
    if count.saturating_mul(8) > r.bytes.len().saturating_sub(r.at) {
        return Err(format!(
            "game server {game} declares more players than the file holds"
        ));
    }
    let mut players = Vec::with_capacity(count);
    for _ in 0..count {
        let raw = r.u64()?;
        players.push(UserId::new(raw).ok_or_else(|| format!("invalid user id {raw}"))?);
    }
    Ok(SavedServer {
        game,
        place,
        location: location.into(),
        deadline,
        players,
    })
}

fn decode_user_id(r: &mut Reader<'_>) -> Result<UserId, String> {
    let raw = r.u64()?;
    UserId::new(raw).ok_or_else(|| format!("invalid user id {raw}"))
}

fn decode_settings(r: &mut Reader<'_>) -> Result<(UserId, Settings), String> {
    let user = decode_user_id(r)?;
    let visibility = match r.u8()? {
        0 => Visibility::Everyone,
        1 => Visibility::Friends,
        2 => Visibility::Nobody,
        other => return Err(format!("user {user} has unknown visibility {other}")),
    };
    let flags = r.u8()?;
    if flags & !(FLAG_INVISIBLE | FLAG_UNTIL | FLAG_FROZEN) != 0
        || (flags & FLAG_INVISIBLE == 0 && flags != 0)
    {
        return Err(format!("user {user} has unknown settings flags {flags:#x}"));
    }
    let until = WallMillis(r.i64()?);
    let last_online = WallMillis(r.i64()?);
    let invisibility = (flags & FLAG_INVISIBLE != 0).then_some(Invisibility {
        until: (flags & FLAG_UNTIL != 0).then_some(until),
        last_online: (flags & FLAG_FROZEN != 0).then_some(last_online),
    });
    Ok((user, Settings::new(visibility, invisibility)))
}

fn decode_friends(r: &mut Reader<'_>) -> Result<Vec<FriendPair>, String> {
    let count = r.u32()? as usize;
    // Each pair is 16 bytes: a count past the end is refused before any allocation.
    if count.saturating_mul(16) > r.bytes.len().saturating_sub(r.at) {
        return Err("a friends record declares more pairs than the file holds".into());
    }
    let mut pairs = Vec::with_capacity(count);
    for _ in 0..count {
        let (a, b) = (decode_user_id(r)?, decode_user_id(r)?);
        pairs.push(FriendPair::new(a, b).ok_or_else(|| format!("user {a} is its own friend"))?);
    }
    Ok(pairs)
}

fn decode_user<'a>(r: &mut Reader<'a>, version: u32) -> Result<SavedUser<'a>, String> {
    let raw_id = r.u64()?;
    let user_id = UserId::new(raw_id).ok_or_else(|| format!("invalid user id {raw_id}"))?;
    let last_online = WallMillis(r.i64()?);
    let len = r.u32()? as usize;
    let location = std::str::from_utf8(r.take(len)?)
        .map_err(|_| format!("user {user_id} has a location that is not UTF-8"))?;
    let kind = match r.u8()? {
        0 => None,
        1 => Some(PresenceType::Online),
        2 => Some(PresenceType::InGame),
        3 => Some(PresenceType::InStudio),
        other => return Err(format!("user {user_id} has unknown presence type {other}")),
    };
    let live = match kind {
        None => None,
        Some(kind) => {
            let deadline = WallMillis(r.i64()?);
            let place = match r.u8()? {
                0 => None,
                _ => Some(PlaceInfo {
                    place_id: r.i64()?,
                    root_place_id: r.i64()?,
                    universe_id: NonZeroI64::new(r.i64()?),
                }),
            };
            let game_id = match r.u8()? {
                0 => None,
                _ => Some(Uuid::from_slice(r.take(16)?).map_err(|e| e.to_string())?),
            };
            Some(SavedSession {
                deadline,
                session: Session {
                    kind,
                    place,
                    game_id,
                },
            })
        }
    };
    let mut games = Vec::new();
    if version >= 2 {
        for _ in 0..r.u8()? {
            let game = decode_uuid(r)?;
            let (place, location) = decode_place(r)?;
            games.push(SavedGame {
                game,
                place,
                location: location.into(),
                joined: r.u32()?,
                deadline: WallMillis(r.i64()?),
            });
        }
    }
    Ok(SavedUser {
        user_id,
        last_online,
        last_location: location.into(),
        live,
        games,
    })
}

/// A cursor over the checked body; running off its end means the file is truncated.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len());
        let Some(end) = end else {
            return Err(format!(
                "it ends in the middle of a record (byte {})",
                self.at
            ));
        };
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, String> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, String> {
        self.array().map(u64::from_le_bytes)
    }

    fn i64(&mut self) -> Result<i64, String> {
        self.array().map(i64::from_le_bytes)
    }
}

fn parent(path: &Path) -> Option<&Path> {
    path.parent().filter(|p| !p.as_os_str().is_empty())
}

/// Where a snapshot is written before it is renamed over `path`.
fn temporary_path(path: &Path) -> PathBuf {
    sibling(path, ".tmp")
}

/// `path` with `suffix` appended to its file name.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presence::model::LocationName;
    use crate::presence::time::Mono;
    use crate::presence::{Heartbeat, Location};
    use std::time::Duration;

    const TTL: Duration = Duration::from_secs(60);

    fn restore_user(store: &Store, saved: Saved<'_>, now: Now) -> bool {
        match saved {
            Saved::User(user) => store.restore(user, now),
            Saved::Server(server) => store.restore_server(server, now),
            Saved::Settings(user, settings) => {
                store.restore_settings(user, settings, now);
                true
            }
            Saved::Friends(pairs) => store.restore_friendships(pairs).is_empty(),
        }
    }

    fn store() -> Store {
        Store::new(TTL, Duration::from_secs(1), None)
    }

    fn user(n: u64) -> UserId {
        UserId::new(n).unwrap()
    }

    fn at(mono: u64, wall: i64) -> Now {
        Now {
            mono: Mono(mono),
            wall: WallMillis(wall),
        }
    }

    fn filled() -> Store {
        let s = store();
        let t = at(1_000, 1_700_000_000_000);
        s.heartbeat(
            user(1),
            Heartbeat::Present {
                location: LocationName::Given("Xbox \"One\" ✓"),
                session: Session {
                    kind: PresenceType::Online,
                    place: None,
                    game_id: None,
                },
            },
            t,
        );
        s.heartbeat(
            user(2),
            Heartbeat::Present {
                location: LocationName::Shared(Location::playing()),
                session: Session {
                    kind: PresenceType::InGame,
                    place: Some(PlaceInfo {
                        place_id: 5,
                        root_place_id: 4,
                        universe_id: NonZeroI64::new(9),
                    }),
                    game_id: Some(Uuid::from_u128(77)),
                },
            },
            t,
        );
        s.heartbeat(user(3), Heartbeat::Disconnect, t);
        s
    }

    fn encode(store: &Store, now: Now) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snap");
        write(store, &path, now).unwrap();
        fs::read(&path).unwrap()
    }

    #[test]
    fn a_snapshot_round_trips_every_user_exactly() {
        let original = filled();
        let now = at(2_000, 1_700_000_001_000);
        let bytes = encode(&original, now);
        let restored = store();
        // Restored in a process whose monotonic clock started elsewhere.
        let later = at(50, 1_700_000_002_000);
        assert_eq!(
            decode(&bytes, |u| assert!(restore_user(&restored, u, later))),
            Ok(3)
        );
        let ids = [user(1), user(2), user(3), user(4)];
        let before = original.get_many(&ids, Mono(3_000));
        let after = restored.get_many(&ids, Mono(50 + 1_000));
        assert_eq!(before, after);
        assert_eq!(after[0].kind, PresenceType::Online);
        assert_eq!(after[1].kind, PresenceType::InGame);
        assert_eq!(after[2].kind, PresenceType::Offline);
        // The deadline kept its wall-clock time: 60s after the heartbeat.
        let expired = restored.get_many(&[user(1)], Mono(50 + 59_000));
        assert_eq!(expired[0].kind, PresenceType::Offline);
        assert_eq!(expired[0].last_location, "Xbox \"One\" ✓");
    }

    /// A file in version 1's layout, as servers before game servers wrote it, byte by byte.
    fn version_1_file(written_at: i64) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&written_at.to_le_bytes());
        let user = |b: &mut Vec<u8>, id: u64, location: &str| {
            b.push(USER_TAG);
            b.extend_from_slice(&id.to_le_bytes());
            b.extend_from_slice(&(written_at - 500).to_le_bytes());
            b.extend_from_slice(&(location.len() as u32).to_le_bytes());
            b.extend_from_slice(location.as_bytes());
        };
        // Online at Xbox until 30 s after writing.
        user(&mut b, 1, "Xbox");
        b.push(1);
        b.extend_from_slice(&(written_at + 30_000).to_le_bytes());
        b.extend_from_slice(&[0, 0]);
        // InGame at place 5 (root 4, universe 9), in game 77.
        user(&mut b, 2, "Playing");
        b.push(2);
        b.extend_from_slice(&(written_at + 30_000).to_le_bytes());
        b.push(1);
        for n in [5i64, 4, 9] {
            b.extend_from_slice(&n.to_le_bytes());
        }
        b.push(1);
        b.extend_from_slice(Uuid::from_u128(77).as_bytes());
        // Offline at Home.
        user(&mut b, 3, "Home");
        b.push(0);
        b.push(END_TAG);
        b.extend_from_slice(&3u64.to_le_bytes());
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    #[test]
    fn a_version_1_file_is_read_as_it_was_written() {
        let written_at = 1_700_000_000_000;
        let restored = store();
        let later = at(10, written_at + 1_000);
        assert_eq!(
            decode(&version_1_file(written_at), |u| assert!(restore_user(
                &restored, u, later
            ))),
            Ok(3)
        );
        let views = restored.get_many(&[user(1), user(2), user(3)], Mono(20));
        assert_eq!(views[0].kind, PresenceType::Online);
        assert_eq!(views[0].last_location, "Xbox");
        assert_eq!(views[1].kind, PresenceType::InGame);
        assert_eq!(
            views[1].place,
            Some(PlaceInfo {
                place_id: 5,
                root_place_id: 4,
                universe_id: NonZeroI64::new(9)
            })
        );
        assert_eq!(views[1].game_id, Some(Uuid::from_u128(77)));
        assert_eq!(views[2].kind, PresenceType::Offline);
        assert_eq!(views[2].last_location, "Home");
        for view in &views {
            assert_eq!(view.last_online, Some(WallMillis(written_at - 500)));
        }
        // The deadline kept its wall-clock time: 30 s after writing, 29 s after loading.
        let expired = restored.get_many(&[user(1)], Mono(10 + 29_000));
        assert_eq!(expired[0].kind, PresenceType::Offline);
    }

    #[test]
    fn game_sessions_and_live_servers_round_trip() {
        let original = store();
        let catalog = crate::presence::PlaceCatalog::new(&[]);
        let place = crate::presence::sessions::GamePlace::new(1818, Some(3), &catalog).unwrap();
        let t = at(1_000, 1_700_000_000_000);
        let game = Uuid::from_u128(5);
        original
            .report_game_server(game, &place, &[user(1), user(2)], t)
            .unwrap();
        original.heartbeat(
            user(2),
            Heartbeat::Present {
                location: LocationName::Given("Web"),
                session: Session {
                    kind: PresenceType::Online,
                    place: None,
                    game_id: None,
                },
            },
            at(1_500, 1_700_000_000_500),
        );
        let now = at(2_000, 1_700_000_001_000);
        let bytes = encode(&original, now);
        let restored = store();
        let later = at(50, 1_700_000_002_000);
        decode(&bytes, |u| {
            restore_user(&restored, u, later);
        })
        .unwrap();
        assert_eq!(restored.game_servers(), 1);
        let ids = [user(1), user(2)];
        assert_eq!(
            original.get_many(&ids, Mono(3_000)),
            restored.get_many(&ids, Mono(50 + 1_000))
        );
        let after = restored.get_many(&ids, Mono(51));
        assert_eq!(after[0].kind, PresenceType::InGame);
        assert_eq!(after[0].game_id, Some(game));
        // The server is live where it was: players can still join it.
        restored
            .game_server_players(game, &[user(3)], &[user(1)], at(60, 1_700_000_002_010))
            .unwrap();
        let after = restored.get_many(&[user(1), user(2), user(3)], Mono(61));
        assert_eq!(after[0].kind, PresenceType::Offline);
        assert_eq!(after[1].kind, PresenceType::InGame);
        assert_eq!(after[2].kind, PresenceType::InGame);
        // User 2's game ends with the server, 60 s after its report; its app, heartbeated
        // 0.5 s later, shows then.
        let ended = restored.get_many(&[user(2)], Mono(50 + 58_000));
        assert_eq!(ended[0].kind, PresenceType::Online);
        assert_eq!(ended[0].last_location, "Web");
    }

    fn patch(json: &str, now: Now) -> crate::presence::privacy::CheckedPatch {
        serde_json::from_str::<crate::presence::privacy::SettingsPatch>(json)
            .unwrap()
            .check(now.wall)
            .unwrap()
    }

    fn friend_pairs(add: &[(u64, u64)]) -> crate::presence::privacy::FriendshipChanges {
        crate::presence::privacy::FriendshipsBody {
            add: add
                .iter()
                .map(|&(a, b)| [UserId::new(a), UserId::new(b)])
                .collect(),
            remove: Vec::new(),
        }
        .check()
        .unwrap()
    }

    #[test]
    fn settings_and_friendships_round_trip_those_of_users_never_seen_included() {
        // More friends than one friends record holds, for one user.
        let original = filled().with_max_friends(10_000);
        let t = at(1_500, 1_700_000_000_500);
        original.change_settings(user(1), &patch(r#"{"visibility":"friends"}"#, t), t);
        // Invisible after being seen: the frozen lastOnline is kept.
        original.change_settings(user(3), &patch(r#"{"invisible":true}"#, t), t);
        // Never seen, with an end time; never seen, visibility only.
        let until =
            r#"{"visibility":"nobody","invisible":true,"invisibleUntil":"2023-11-14T22:13:30Z"}"#;
        original.change_settings(user(7), &patch(until, t), t);
        original.change_settings(user(8), &patch(r#"{"visibility":"friends"}"#, t), t);
        // An invisibility that has ended by the time of writing is not written.
        let ends = r#"{"invisible":true,"invisibleUntil":"2023-11-14T22:13:20.800Z"}"#;
        original.change_settings(user(9), &patch(ends, t), t);
        let pairs: Vec<(u64, u64)> = (2..=6_000)
            .map(|n| (1, n))
            .chain([(7, 8), (3, 2)])
            .collect();
        for chunk in pairs.chunks(1_000) {
            assert!(original
                .change_friendships(&friend_pairs(chunk), t)
                .is_empty());
        }

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snap");
        let now = at(2_000, 1_700_000_001_000);
        let written = write(&original, &path, now).unwrap();
        assert_eq!(
            (written.users, written.settings, written.friendships),
            (3, 4, 6_001)
        );
        let restored = store().with_max_friends(10_000);
        let later = at(50, 1_700_000_002_000);
        let loaded = load(&restored, &path, later).unwrap().unwrap();
        assert_eq!((loaded.users, loaded.forgotten), (3, 0));
        assert_eq!(
            (
                loaded.settings,
                loaded.friendships,
                loaded.friendships_skipped
            ),
            (4, 6_001, 0)
        );
        for n in 1..=9 {
            assert_eq!(
                restored.settings(user(n), later),
                original.settings(user(n), later),
                "{n}"
            );
            assert_eq!(
                restored.friends_of(user(n)),
                original.friends_of(user(n)),
                "{n}"
            );
        }
        assert!(restored
            .settings(user(3), later)
            .invisibility()
            .unwrap()
            .last_online
            .is_some());
        assert!(restored.settings(user(7), later).invisible_at(later.wall));
        assert_eq!(restored.friendships().pairs(), 6_001);
        // Users never seen still read as never seen, and are not users held.
        let ids: Vec<UserId> = (1..=9).map(user).collect();
        assert_eq!(
            original.get_many(&ids, Mono(3_000)),
            restored.get_many(&ids, Mono(50 + 1_000))
        );
        assert_eq!(restored.len(), 3);
    }

    #[test]
    fn restored_friendships_respect_max_friends() {
        let original = store();
        let t = at(0, 1_700_000_000_000);
        original.change_friendships(&friend_pairs(&[(1, 2), (1, 3), (4, 5)]), t);
        let bytes = encode(&original, t);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snap");
        fs::write(&path, &bytes).unwrap();
        let restored = store().with_max_friends(1);
        let loaded = load(&restored, &path, t).unwrap().unwrap();
        assert_eq!((loaded.friendships, loaded.friendships_skipped), (2, 1));
        assert_eq!(restored.friends_of(user(1)).len(), 1);
        assert_eq!(restored.friends_of(user(4)), vec![user(5)]);
    }

    /// A file in version 2's layout, as servers before privacy settings wrote it, byte by
    /// byte: one user in a game server's session, one Offline, and the server.
    fn version_2_file(written_at: i64) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&2u32.to_le_bytes());
        b.extend_from_slice(&written_at.to_le_bytes());
        let place = |b: &mut Vec<u8>| {
            for n in [1818i64, 1818, 13058] {
                b.extend_from_slice(&n.to_le_bytes());
            }
            b.extend_from_slice(&7u32.to_le_bytes());
            b.extend_from_slice(b"Playing");
        };
        // User 1: no app session, one game session until 30 s after writing.
        b.push(USER_TAG);
        b.extend_from_slice(&1u64.to_le_bytes());
        b.extend_from_slice(&(written_at - 500).to_le_bytes());
        b.extend_from_slice(&7u32.to_le_bytes());
        b.extend_from_slice(b"Playing");
        b.push(0);
        b.push(1);
        b.extend_from_slice(Uuid::from_u128(5).as_bytes());
        place(&mut b);
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&(written_at + 30_000).to_le_bytes());
        // User 2: Offline at Home, no games.
        b.push(USER_TAG);
        b.extend_from_slice(&2u64.to_le_bytes());
        b.extend_from_slice(&(written_at - 500).to_le_bytes());
        b.extend_from_slice(&4u32.to_le_bytes());
        b.extend_from_slice(b"Home");
        b.push(0);
        b.push(0);
        // The server, with user 1.
        b.push(SERVER_TAG);
        b.extend_from_slice(Uuid::from_u128(5).as_bytes());
        place(&mut b);
        b.extend_from_slice(&(written_at + 30_000).to_le_bytes());
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes());
        b.push(END_TAG);
        b.extend_from_slice(&2u64.to_le_bytes());
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    #[test]
    fn a_version_2_file_loads_with_default_settings_and_no_friendships() {
        let written_at = 1_700_000_000_000;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snap");
        fs::write(&path, version_2_file(written_at)).unwrap();
        let restored = store();
        let later = at(10, written_at + 1_000);
        let loaded = load(&restored, &path, later).unwrap().unwrap();
        assert_eq!(
            (loaded.users, loaded.settings, loaded.friendships),
            (2, 0, 0)
        );
        let views = restored.get_many(&[user(1), user(2)], Mono(20));
        assert_eq!(views[0].kind, PresenceType::InGame);
        assert_eq!(views[0].game_id, Some(Uuid::from_u128(5)));
        assert_eq!(views[1].kind, PresenceType::Offline);
        assert_eq!(views[1].last_location, "Home");
        assert_eq!(restored.game_servers(), 1);
        for n in [1, 2] {
            assert!(restored.settings(user(n), later).is_default());
            assert!(restored.friends_of(user(n)).is_empty());
        }
        // Written again, it is a version 3 file that reads back the same.
        let again = dir.path().join("again");
        write(&restored, &again, later).unwrap();
        assert_eq!(fs::read(&again).unwrap()[8..12], VERSION.to_le_bytes());
        let reloaded = store();
        assert_eq!(load(&reloaded, &again, later).unwrap().unwrap().users, 2);
        assert_eq!(reloaded.get_many(&[user(1), user(2)], Mono(20)), views);
    }

    #[test]
    fn a_settings_or_friends_record_in_an_older_version_or_out_of_range_is_refused() {
        let body = |version: u32, record: &[u8]| {
            let mut b = Vec::new();
            b.extend_from_slice(MAGIC);
            b.extend_from_slice(&version.to_le_bytes());
            b.extend_from_slice(&0i64.to_le_bytes());
            b.extend_from_slice(record);
            b.push(END_TAG);
            b.extend_from_slice(&0u64.to_le_bytes());
            let crc = crc32fast::hash(&b);
            b.extend_from_slice(&crc.to_le_bytes());
            b
        };
        let settings = |visibility: u8, flags: u8| {
            let mut r = vec![SETTINGS_TAG];
            r.extend_from_slice(&1u64.to_le_bytes());
            r.extend_from_slice(&[visibility, flags]);
            r.extend_from_slice(&[0; 16]);
            r
        };
        let friends = |a: u64, b: u64, count: u32| {
            let mut r = vec![FRIENDS_TAG];
            r.extend_from_slice(&count.to_le_bytes());
            r.extend_from_slice(&a.to_le_bytes());
            r.extend_from_slice(&b.to_le_bytes());
            r
        };
        assert!(decode(&body(3, &settings(2, 7)), |_| {}).is_ok());
        assert!(decode(&body(3, &friends(1, 2, 1)), |_| {}).is_ok());
        for bad in [
            body(2, &settings(0, 1)),
            body(2, &friends(1, 2, 1)),
            body(3, &settings(3, 0)),
            body(3, &settings(0, 8)),
            body(3, &settings(0, 2)),
            body(3, &friends(1, 1, 1)),
            body(3, &friends(0, 2, 1)),
            body(3, &friends(1, 2, u32::MAX)),
        ] {
            assert!(decode(&bad, |_| {}).is_err());
        }
    }

    #[test]
    fn a_present_user_whose_deadline_passed_while_down_comes_back_offline() {
        let original = filled();
        let bytes = encode(&original, at(2_000, 1_700_000_001_000));
        let restored = store();
        let much_later = at(0, 1_700_000_100_000);
        decode(&bytes, |u| assert!(restore_user(&restored, u, much_later))).unwrap();
        let v = restored.get_many(&[user(2)], Mono(0)).remove(0);
        assert_eq!(v.kind, PresenceType::Offline);
        assert_eq!(v.last_location, "Playing");
        assert_eq!(v.last_online, Some(WallMillis(1_700_000_000_000)));
        assert_eq!(restored.scheduled(), 0);
    }

    #[test]
    fn any_flipped_or_missing_byte_is_refused() {
        let bytes = encode(&filled(), at(2_000, 1_700_000_001_000));
        for cut in [0, 5, 12, bytes.len() / 2, bytes.len() - 1] {
            assert!(decode(&bytes[..cut], |_| {}).is_err(), "cut at {cut}");
        }
        for i in (0..bytes.len()).step_by(7) {
            let mut corrupt = bytes.clone();
            corrupt[i] ^= 0x40;
            assert!(decode(&corrupt, |_| {}).is_err(), "flip at {i}");
        }
    }

    #[test]
    fn another_version_is_named_in_the_refusal() {
        let mut bytes = encode(&filled(), at(2_000, 1_700_000_001_000));
        bytes[8..12].copy_from_slice(&7u32.to_le_bytes());
        let err = decode(&bytes, |_| {}).unwrap_err();
        assert!(err.contains("version 7"), "{err}");
    }

    #[test]
    fn a_missing_file_loads_nothing_and_a_bad_one_is_left_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("none");
        assert!(load(&store(), &path, at(0, 0)).unwrap().is_none());
        fs::write(&path, b"garbage").unwrap();
        let err = load(&store(), &path, at(0, 0)).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert_eq!(fs::read(&path).unwrap(), b"garbage");
    }

    #[test]
    fn writing_replaces_the_file_and_leaves_no_temporary_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/dir/snap");
        prepare(&path).unwrap();
        let s = filled();
        let first = write(&s, &path, at(2_000, 1_700_000_001_000)).unwrap();
        assert_eq!(first.users, 3);
        s.heartbeat(user(4), Heartbeat::Disconnect, at(2_000, 1_700_000_001_000));
        let second = write(&s, &path, at(2_000, 1_700_000_001_000)).unwrap();
        assert_eq!(second.users, 4);
        assert_eq!(second.bytes, fs::metadata(&path).unwrap().len());
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("snap")]);
    }

    #[test]
    fn a_snapshot_path_is_held_by_one_lock_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/snap");
        let held = lock(&path).unwrap();
        assert_eq!(held.path(), dir.path().join("sub/snap.lock"));
        let pid = std::process::id().to_string();
        assert_eq!(fs::read_to_string(held.path()).unwrap().trim(), pid);
        let err = lock(&path).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains(&format!("pid {pid}")), "{err}");
        drop(held);
        let again = lock(&path).unwrap();
        assert_eq!(fs::read_to_string(again.path()).unwrap().trim(), pid);
    }

    #[test]
    fn a_length_past_the_end_of_the_file_is_refused_without_reading_on() {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&VERSION.to_le_bytes());
        bytes.extend_from_slice(&0i64.to_le_bytes());
        bytes.push(USER_TAG);
        bytes.extend_from_slice(&1u64.to_le_bytes());
        bytes.extend_from_slice(&0i64.to_le_bytes());
        bytes.extend_from_slice(&u32::MAX.to_le_bytes()); // location_len
        bytes.extend_from_slice(b"Home");
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        let err = decode(&bytes, |_| {}).unwrap_err();
        assert!(err.contains("ends in the middle of a record"), "{err}");
    }

    #[test]
    fn a_path_below_a_file_cannot_be_prepared() {
        let file = tempfile::NamedTempFile::new().unwrap();
        assert!(prepare(&file.path().join("snap")).is_err());
    }
}
