//! Code snapshots: a pipeline's `code:` directory as one deterministic tar,
//! packed by `drover submit` and unpacked read-only by agents.
//!
//! Same files → same bytes → same sha256, wherever and whenever they are
//! packed: entries are sorted by path, and a header keeps only the path, the
//! size, the kind (file, directory, symlink) and whether the file is
//! executable (mode 0755, else 0644); owners and times are zero. Which files
//! go in follows ripgrep's rules (the `ignore` crate): `.gitignore` files in
//! the directory and above it (also outside a git repository), `.ignore` and
//! `.droverignore` files; never `.git/`. Git's global and per-repository
//! excludes are left out so two machines pack the same bytes.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::{sha256_hex, ArtifactError};

/// The ignore file only Drover reads, with `.gitignore`'s syntax.
pub const IGNORE_FILE: &str = ".droverignore";

/// A packed directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The tar itself.
    pub tar: Vec<u8>,
    /// Lowercase hex sha256 of `tar`.
    pub sha256: String,
    /// Regular files and symlinks packed.
    pub files: usize,
    /// Every directory in it, relative, `/`-separated (the root is not listed).
    pub dirs: Vec<String>,
}

/// Why a directory could not be packed or a snapshot unpacked.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("`{}` is not a directory", .0.display())]
    NotADirectory(PathBuf),
    /// Stopped once the tar passed `limit` bytes.
    #[error("`{}` packs to more than {limit} bytes", dir.display())]
    TooLarge { dir: PathBuf, limit: u64 },
    /// A local file could not be read or written ([`ArtifactError::Io`]).
    #[error(transparent)]
    Io(ArtifactError),
    /// Listing the directory failed (unreadable entry, bad ignore file).
    #[error("listing `{}`: {message}", dir.display())]
    Walk { dir: PathBuf, message: String },
    /// An entry a snapshot never holds: an absolute path, `..`, a hard link, a device.
    #[error("snapshot entry `{path}`: {reason}")]
    BadEntry { path: String, reason: String },
}

fn io<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> SnapshotError + 'a {
    move |source| SnapshotError::Io(ArtifactError::io(action, path, source))
}

/// What one walked path becomes in the tar.
enum Kind {
    Dir,
    File { executable: bool },
    Symlink(PathBuf),
}

/// Packs `dir` (see the module docs), refusing once the tar is over
/// `max_bytes`.
pub fn pack(dir: &Path, max_bytes: u64) -> Result<Snapshot, SnapshotError> {
    if !dir.is_dir() {
        return Err(SnapshotError::NotADirectory(dir.to_owned()));
    }
    let mut entries = list(dir)?;
    // Byte order of the relative paths: independent of the walk's order.
    entries.sort_by(|a, b| a.0.as_os_str().cmp(b.0.as_os_str()));

    let mut builder = tar::Builder::new(Vec::new());
    let (mut files, mut dirs) = (0, Vec::new());
    for (rel, kind) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        let written = match kind {
            Kind::Dir => {
                dirs.push(rel.to_string_lossy().into_owned());
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                builder.append_data(&mut header, &rel, std::io::empty())
            }
            Kind::File { executable } => {
                files += 1;
                let path = dir.join(&rel);
                let mut file = std::fs::File::open(&path).map_err(io("opening", &path))?;
                let size = file.metadata().map_err(io("reading", &path))?.len();
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(if executable { 0o755 } else { 0o644 });
                header.set_size(size);
                // A file that changes size while it is read fails the append.
                builder.append_data(&mut header, &rel, (&mut file).take(size))
            }
            Kind::Symlink(target) => {
                files += 1;
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                builder.append_link(&mut header, &rel, &target)
            }
        };
        written.map_err(io("packing", &dir.join(&rel)))?;
        if builder.get_ref().len() as u64 > max_bytes {
            return Err(SnapshotError::TooLarge {
                dir: dir.to_owned(),
                limit: max_bytes,
            });
        }
    }
    let tar = builder.into_inner().map_err(io("packing", dir))?;
    if tar.len() as u64 > max_bytes {
        return Err(SnapshotError::TooLarge {
            dir: dir.to_owned(),
            limit: max_bytes,
        });
    }
    let sha256 = sha256_hex(&tar);
    Ok(Snapshot {
        tar,
        sha256,
        files,
        dirs,
    })
}

/// The paths under `dir` that go into its snapshot, relative to it.
fn list(dir: &Path) -> Result<Vec<(PathBuf, Kind)>, SnapshotError> {
    let walk_error = |message: String| SnapshotError::Walk {
        dir: dir.to_owned(),
        message,
    };
    let walker = ignore::WalkBuilder::new(dir)
        .hidden(false)
        .parents(true)
        .ignore(true)
        .git_ignore(true)
        .git_global(false)
        .git_exclude(false)
        .require_git(false)
        .follow_links(false)
        .add_custom_ignore_filename(IGNORE_FILE)
        .filter_entry(|e| e.file_name() != ".git")
        .build();
    let mut entries = Vec::new();
    for entry in walker {
        let entry = entry.map_err(|e| walk_error(e.to_string()))?;
        if entry.depth() == 0 {
            continue;
        }
        let rel = entry
            .path()
            .strip_prefix(dir)
            .map_err(|e| walk_error(e.to_string()))?
            .to_owned();
        let Some(file_type) = entry.file_type() else {
            continue;
        };
        let kind = if file_type.is_dir() {
            Kind::Dir
        } else if file_type.is_symlink() {
            let target = std::fs::read_link(entry.path()).map_err(io("reading", entry.path()))?;
            Kind::Symlink(target)
        } else if file_type.is_file() {
            let mode = entry
                .metadata()
                .map_err(|e| walk_error(e.to_string()))?
                .permissions()
                .mode();
            Kind::File {
                executable: mode & 0o111 != 0,
            }
        } else {
            // Sockets, pipes and devices mean nothing on another machine.
            continue;
        };
        entries.push((rel, kind));
    }
    Ok(entries)
}

/// Unpacks a snapshot into `dest` (created; must not exist), then makes
/// every file and directory in it read-only (files 0444, or 0555 when
/// executable; directories 0555). Only directories, regular files and
/// symlinks are accepted, each inside `dest`.
pub fn unpack(tar: impl Read, dest: &Path) -> Result<(), SnapshotError> {
    std::fs::create_dir(dest).map_err(io("creating", dest))?;
    let mut archive = tar::Archive::new(tar);
    archive.set_preserve_mtime(false);
    archive.set_preserve_permissions(false);
    let entries = archive.entries().map_err(io("reading snapshot", dest))?;
    for entry in entries {
        let mut entry = entry.map_err(io("reading snapshot", dest))?;
        let path = entry.path_bytes().into_owned();
        let shown = || String::from_utf8_lossy(&path).into_owned();
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir() || kind.is_symlink()) {
            return Err(SnapshotError::BadEntry {
                path: shown(),
                reason: format!("entry type {kind:?} is not allowed"),
            });
        }
        // `unpack_in` refuses (false) a path with `..` or one leading out
        // through a symlink it created.
        let inside = entry.unpack_in(dest).map_err(io("unpacking into", dest))?;
        if !inside {
            return Err(SnapshotError::BadEntry {
                path: shown(),
                reason: "outside the snapshot".to_owned(),
            });
        }
    }
    read_only(dest)
}

/// chmod a-w over the tree, symlinks left alone; directories last, so
/// their own entries can still be changed while they are walked.
fn read_only(dir: &Path) -> Result<(), SnapshotError> {
    for entry in std::fs::read_dir(dir).map_err(io("reading", dir))? {
        let path = entry.map_err(io("reading", dir))?.path();
        let meta = std::fs::symlink_metadata(&path).map_err(io("reading", &path))?;
        if meta.is_dir() {
            read_only(&path)?;
        } else if meta.is_file() {
            let mode = if meta.permissions().mode() & 0o111 != 0 {
                0o555
            } else {
                0o444
            };
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .map_err(io("making read-only", &path))?;
        }
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555))
        .map_err(io("making read-only", dir))
}

/// Makes a snapshot directory writable again, so it can be removed.
pub fn writable(dir: &Path) -> Result<(), SnapshotError> {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .map_err(io("making writable", dir))?;
    for entry in std::fs::read_dir(dir).map_err(io("reading", dir))? {
        let path = entry.map_err(io("reading", dir))?.path();
        let meta = std::fs::symlink_metadata(&path).map_err(io("reading", &path))?;
        if meta.is_dir() {
            writable(&path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn write(root: &Path, rel: &str, text: &str) -> TestResult {
        let path = root.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, text)?;
        Ok(())
    }

    fn tree() -> Result<tempfile::TempDir, Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let root = dir.path();
        write(root, "main.py", "print('hi')\n")?;
        write(root, "lib/util.py", "X = 1\n")?;
        write(root, "data/big.bin", "0123456789")?;
        write(root, "notes.tmp", "scratch")?;
        write(root, ".gitignore", "*.tmp\n")?;
        write(root, ".droverignore", "data/\n")?;
        write(root, ".git/HEAD", "ref: refs/heads/main\n")?;
        std::fs::set_permissions(root.join("main.py"), std::fs::Permissions::from_mode(0o700))?;
        std::os::unix::fs::symlink("lib/util.py", root.join("link.py"))?;
        Ok(dir)
    }

    fn names(tar: &[u8]) -> Result<Vec<(String, u32)>, Box<dyn std::error::Error>> {
        let mut archive = tar::Archive::new(tar);
        let mut out = Vec::new();
        for entry in archive.entries()? {
            let entry = entry?;
            let header = entry.header();
            assert_eq!(header.mtime()?, 0);
            assert_eq!(header.uid()?, 0);
            out.push((entry.path()?.to_string_lossy().into_owned(), header.mode()?));
        }
        Ok(out)
    }

    #[test]
    fn packs_sorted_normalised_entries_and_leaves_out_ignored_files() -> TestResult {
        let dir = tree()?;
        let snapshot = pack(dir.path(), 1 << 20)?;
        assert_eq!(
            names(&snapshot.tar)?,
            vec![
                (".droverignore".to_owned(), 0o644),
                (".gitignore".to_owned(), 0o644),
                ("lib".to_owned(), 0o755),
                ("lib/util.py".to_owned(), 0o644),
                ("link.py".to_owned(), 0o777),
                ("main.py".to_owned(), 0o755),
            ]
        );
        assert_eq!(snapshot.files, 5);
        assert_eq!(snapshot.dirs, vec!["lib".to_owned()]);
        assert_eq!(snapshot.sha256, sha256_hex(&snapshot.tar));
        Ok(())
    }

    #[test]
    fn same_files_same_digest_and_a_change_gives_another() -> TestResult {
        let dir = tree()?;
        let first = pack(dir.path(), 1 << 20)?;
        // Times and an ignored file do not count; content does.
        std::fs::write(dir.path().join("notes.tmp"), "other scratch")?;
        std::fs::set_permissions(
            dir.path().join("lib/util.py"),
            std::fs::Permissions::from_mode(0o600),
        )?;
        assert_eq!(pack(dir.path(), 1 << 20)?.sha256, first.sha256);
        write(dir.path(), "lib/util.py", "X = 2\n")?;
        assert_ne!(pack(dir.path(), 1 << 20)?.sha256, first.sha256);
        Ok(())
    }

    #[test]
    fn refuses_a_missing_dir_and_a_snapshot_over_the_limit() -> TestResult {
        let dir = tree()?;
        let missing = dir.path().join("nope");
        assert!(matches!(
            pack(&missing, 1 << 20),
            Err(SnapshotError::NotADirectory(p)) if p == missing
        ));
        let err = pack(dir.path(), 100).map(|s| s.sha256);
        assert!(
            matches!(&err, Err(SnapshotError::TooLarge { limit: 100, .. })),
            "{err:?}"
        );
        Ok(())
    }

    #[test]
    fn unpacks_read_only_and_refuses_entries_outside() -> TestResult {
        let dir = tree()?;
        let snapshot = pack(dir.path(), 1 << 20)?;
        let out = tempfile::tempdir()?;
        let dest = out.path().join("code");
        unpack(snapshot.tar.as_slice(), &dest)?;
        assert_eq!(
            std::fs::read_to_string(dest.join("lib/util.py"))?,
            "X = 1\n"
        );
        assert_eq!(std::fs::read_to_string(dest.join("link.py"))?, "X = 1\n");
        assert!(!dest.join("notes.tmp").exists() && !dest.join("data").exists());
        let mode = |p: &str| -> std::io::Result<u32> {
            Ok(std::fs::metadata(dest.join(p))?.permissions().mode() & 0o777)
        };
        assert_eq!(mode("main.py")?, 0o555);
        assert_eq!(mode("lib/util.py")?, 0o444);
        assert_eq!(mode("lib")?, 0o555);
        assert_eq!(mode(".")?, 0o555);
        writable(&dest)?;
        std::fs::remove_dir_all(&dest)?;

        // A hand-made tar with a hard link is refused.
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Link);
        header.set_size(0);
        builder.append_link(&mut header, "passwd", "/etc/passwd")?;
        let evil = builder.into_inner()?;
        let err = unpack(evil.as_slice(), &out.path().join("evil"));
        assert!(
            matches!(&err, Err(SnapshotError::BadEntry { path, .. }) if path == "passwd"),
            "{err:?}"
        );
        Ok(())
    }
}
