//! The files in `data_dir`: generation files, their loading (with torn-tail truncation), the
//! creation of new generations and the directory lock.
//!
//! - `sessions-<generation>.log` (`generation`: 16 lower-case hex digits): a header, then frames. A new
//!   generation starts as a snapshot of the state and then takes the appends.
//! - `sessions-<generation>.log.tmp`: a generation being written; never read, deleted on load.
//! - `LOCK`: held with an exclusive advisory lock while the store is open.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::record::{
    self, BASE_LEN_OFFSET, Decoded, FRAME_HEADER_LEN, HEADER_LEN, HeaderCheck, MAX_PAYLOAD_BYTES,
    Record,
};

/// The lock file's name.
pub(crate) const LOCK_FILE: &str = "LOCK";
const PREFIX: &str = "sessions-";
const SUFFIX: &str = ".log";
const TMP_SUFFIX: &str = ".log.tmp";

/// The name of generation `generation`.
pub(crate) fn file_name(generation: u64) -> String {
    format!("{PREFIX}{generation:016x}{SUFFIX}")
}

/// The name of generation `generation` while it is being written.
pub(crate) fn tmp_file_name(generation: u64) -> String {
    format!("{PREFIX}{generation:016x}{TMP_SUFFIX}")
}

fn parse_gen(name: &str) -> Option<u64> {
    let hex = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// Fsyncs a directory, so that renames and deletions in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates (or empties) a `.tmp` generation file holding only a header; answers it with its
/// length.
pub(crate) fn create_tmp(path: &Path) -> io::Result<(File, u64)> {
    let mut f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)?;
    f.write_all(&record::header(HEADER_LEN as u64))?;
    Ok((f, HEADER_LEN as u64))
}

/// Writes the base length into a file's header (the cursor is left after it).
pub(crate) fn stamp_base_len(f: &mut File, base_len: u64) -> io::Result<()> {
    f.seek(SeekFrom::Start(BASE_LEN_OFFSET))?;
    f.write_all(&base_len.to_le_bytes())
}

/// Takes the exclusive lock of `dir` (released when the file is closed).
pub(crate) fn lock_dir(dir: &Path) -> io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join(LOCK_FILE))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!(
                "the store in {} is in use by another process (or store instance)",
                dir.display()
            ),
        )),
        Err(std::fs::TryLockError::Error(e)) if e.kind() == io::ErrorKind::Unsupported => {
            log::warn!("cannot lock {}: {e}; make sure only one sessiond uses it", dir.display());
            Ok(f)
        }
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

/// Where loaded records go.
pub(crate) trait Sink {
    /// The length of the file about to be read.
    fn size_hint(&mut self, file_len: u64);
    /// One record, in log order.
    fn apply(&mut self, rec: Record<'_>);
}

/// The generation file that was opened, positioned for appends, and what loading found.
pub(crate) struct Loaded {
    pub file: File,
    pub path: PathBuf,
    pub generation: u64,
    /// Bytes in the file after loading (and truncation).
    pub len: u64,
    /// The file's length when its snapshot part was complete.
    pub base_len: u64,
    pub records: u64,
    pub truncated_bytes: u64,
    pub skipped_records: u64,
}

/// Reads until `buf` is full or the end of the file; answers how many bytes were read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Why reading stopped before the end of the file.
enum Stop {
    Eof,
    Torn(&'static str),
}

/// Creates the first generation: an empty, fsynced, renamed-into-place file.
fn create_first(dir: &Path, generation: u64) -> io::Result<()> {
    let tmp = dir.join(tmp_file_name(generation));
    let (f, _) = create_tmp(&tmp)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, dir.join(file_name(generation)))?;
    sync_dir(dir)
}

/// Loads the newest generation of `dir`, feeding every record to `sink` in order (after
/// telling it the file's length).
///
/// Deletes leftover `.tmp` files and older generations, creates the first generation when
/// there is none, truncates a torn or corrupt tail. Fails on I/O errors, on a file that is
/// not a sessiond log, and on a newer format version.
pub(crate) fn load(dir: &Path, sink: &mut impl Sink) -> io::Result<Loaded> {
    let mut gens = Vec::new();
    let mut removed_any = false;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with(PREFIX) && name.ends_with(TMP_SUFFIX) {
            log::warn!("deleting unfinished snapshot {name}");
            std::fs::remove_file(entry.path())?;
            removed_any = true;
        } else if let Some(generation) = parse_gen(name) {
            gens.push(generation);
        }
    }
    gens.sort_unstable();
    let generation = match gens.last() {
        Some(g) => *g,
        None => {
            create_first(dir, 1)?;
            removed_any = false;
            1
        }
    };
    if removed_any {
        sync_dir(dir)?;
    }
    let path = dir.join(file_name(generation));
    let mut file = OpenOptions::new().read(true).write(true).open(&path)?;
    let file_len = file.metadata()?.len();
    sink.size_hint(file_len);

    let mut records = 0u64;
    let mut skipped_records = 0u64;
    let mut good = HEADER_LEN as u64;
    let base_len;
    let stop;
    if file_len < HEADER_LEN as u64 {
        // Cannot happen with our rename protocol, short of a broken file system: start over.
        log::warn!("{} has a torn header ({file_len} bytes); starting it empty", path.display());
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        file.write_all(&record::header(HEADER_LEN as u64))?;
        file.sync_all()?;
        base_len = HEADER_LEN as u64;
        stop = Stop::Eof;
    } else {
        let mut reader = BufReader::with_capacity(1 << 20, &file);
        let mut h = [0u8; HEADER_LEN];
        reader.read_exact(&mut h)?;
        base_len = match record::check_header(&h) {
            HeaderCheck::Ok { base_len } => base_len,
            HeaderCheck::BadMagic => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} is not a sessiond store log", path.display()),
                ));
            }
            HeaderCheck::Unsupported(v) => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!(
                        "{} has format version {v}; this build reads up to {}",
                        path.display(),
                        record::FORMAT_VERSION
                    ),
                ));
            }
        };
        let mut payload = Vec::with_capacity(4096);
        stop = loop {
            let mut fh = [0u8; FRAME_HEADER_LEN];
            match read_full(&mut reader, &mut fh)? {
                0 => break Stop::Eof,
                n if n < FRAME_HEADER_LEN => break Stop::Torn("short frame header"),
                _ => {}
            }
            let (len_bytes, len, crc) = record::parse_frame_header(&fh);
            if len > MAX_PAYLOAD_BYTES {
                break Stop::Torn("length over the limit");
            }
            payload.resize(len, 0);
            if read_full(&mut reader, &mut payload)? < len {
                break Stop::Torn("short payload");
            }
            if record::frame_crc(len_bytes, &payload) != crc {
                break Stop::Torn("checksum mismatch");
            }
            match record::decode_payload(&payload) {
                None => break Stop::Torn("undecodable payload"),
                Some(Decoded::Known(rec)) => {
                    sink.apply(rec);
                    records += 1;
                }
                Some(Decoded::UnknownKind(kind)) => {
                    if skipped_records == 0 {
                        log::warn!(
                            "{}: skipping records of unknown kind {kind:?} (written by a newer \
                             version?)",
                            path.display()
                        );
                    }
                    skipped_records += 1;
                }
            }
            good += (FRAME_HEADER_LEN + len) as u64;
        };
    }
    let mut truncated_bytes = 0;
    if let Stop::Torn(why) = stop {
        truncated_bytes = file_len - good;
        log::warn!(
            "{}: {why} at byte {good}; cutting off the last {truncated_bytes} bytes \
             ({records} records kept)",
            path.display()
        );
        file.set_len(good)?;
        file.sync_all()?;
    }
    let len = if file_len < HEADER_LEN as u64 { HEADER_LEN as u64 } else { good };
    file.seek(SeekFrom::Start(len))?;

    let mut deleted_old = false;
    for old in gens.iter().filter(|g| **g < generation) {
        let p = dir.join(file_name(*old));
        log::info!("deleting superseded generation {}", p.display());
        std::fs::remove_file(&p)?;
        deleted_old = true;
    }
    if deleted_old {
        sync_dir(dir)?;
    }
    Ok(Loaded {
        file,
        path,
        generation,
        len,
        base_len: base_len.min(len),
        records,
        truncated_bytes,
        skipped_records,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    struct Ignore;
    impl Sink for Ignore {
        fn size_hint(&mut self, _: u64) {}
        fn apply(&mut self, _: Record<'_>) {}
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(file_name(26), "sessions-000000000000001a.log");
        assert_eq!(parse_gen(&file_name(26)), Some(26));
        assert_eq!(parse_gen(&tmp_file_name(26)), None);
        assert_eq!(parse_gen("sessions-1a.log"), None);
        assert_eq!(parse_gen("other"), None);
    }

    #[test]
    fn a_second_lock_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock_dir(dir.path()).unwrap();
        let err = lock_dir(dir.path()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        drop(first);
        lock_dir(dir.path()).unwrap();
    }

    #[test]
    fn a_foreign_or_newer_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(file_name(1)), [b'x'; 64]).unwrap();
        let err = load(dir.path(), &mut Ignore).err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);

        let mut h = record::header(HEADER_LEN as u64);
        h[8..12].copy_from_slice(&9u32.to_le_bytes());
        std::fs::write(dir.path().join(file_name(2)), h).unwrap();
        let err = load(dir.path(), &mut Ignore).err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::Unsupported);
    }

    #[test]
    fn a_torn_header_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(file_name(3)), b"SESS").unwrap();
        let l = load(dir.path(), &mut Ignore).unwrap();
        assert_eq!(l.generation, 3);
        assert_eq!(l.len, HEADER_LEN as u64);
        assert_eq!(
            std::fs::metadata(dir.path().join(file_name(3))).unwrap().len(),
            HEADER_LEN as u64
        );
    }
}
