//! The local Docker engine for tests: whether it answers, and a tiny
//! busybox image built without any registry (`docker import` of a rootfs
//! made from the host's static busybox, Debian package `busybox-static`).

use std::os::fd::AsRawFd;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::process::Command;
use tokio::sync::OnceCell;

/// The tag [`ensure_test_image`] builds.
pub const TEST_IMAGE: &str = "drover-test/busybox:latest";

/// Where the engine listens when `DOCKER_HOST` does not say otherwise.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// The engine's unix socket: `DOCKER_HOST` when it names one, else the default.
pub fn socket_path() -> PathBuf {
    std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

/// Whether a Docker engine answers `GET /_ping` on [`socket_path`].
pub async fn engine_reachable() -> bool {
    ping(&socket_path()).await.is_ok()
}

/// `Ok` when the engine answers; otherwise an error saying how to start one.
pub async fn require_engine() -> Result<()> {
    let socket = socket_path();
    ping(&socket).await.with_context(|| {
        format!(
            "no Docker engine answers on {} — the docker tests need one: start it with \
             `dockerd --bridge=none --iptables=false &` (ops/test.sh does), Debian package `docker.io`",
            socket.display()
        )
    })
}

async fn ping(socket: &Path) -> Result<()> {
    let exchange = async {
        let mut s = UnixStream::connect(socket)
            .await
            .with_context(|| format!("connecting to {}", socket.display()))?;
        s.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            .await?;
        let mut reply = String::new();
        s.read_to_string(&mut reply).await?;
        if reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200") {
            Ok(())
        } else {
            bail!(
                "unexpected answer to /_ping: {}",
                reply.lines().next().unwrap_or("")
            )
        }
    };
    tokio::time::timeout(PING_TIMEOUT, exchange)
        .await
        .with_context(|| format!("no answer on {} within {PING_TIMEOUT:?}", socket.display()))?
}

/// Builds [`TEST_IMAGE`] unless the engine has it, and returns its tag.
/// Safe to call from many tests and test processes at once: the first
/// builds under a file lock, the others find the image.
pub async fn ensure_test_image() -> Result<String> {
    static BUILT: OnceCell<String> = OnceCell::const_new();
    BUILT
        .get_or_try_init(|| async {
            require_engine().await?;
            if image_exists(TEST_IMAGE).await? {
                return Ok(TEST_IMAGE.to_owned());
            }
            let lock = lock_file(std::env::temp_dir().join("drover-test-image.lock")).await?;
            // Another process may have built it while this one waited.
            if !image_exists(TEST_IMAGE).await? {
                build_image(TEST_IMAGE).await?;
            }
            drop(lock);
            Ok(TEST_IMAGE.to_owned())
        })
        .await
        .cloned()
}

async fn image_exists(tag: &str) -> Result<bool> {
    let status = Command::new("docker")
        .args(["image", "inspect", tag])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .context("running `docker image inspect` (is the docker CLI installed? Debian package `docker.io`)")?;
    Ok(status.success())
}

/// An exclusive `flock` on `path`, held until the file is dropped.
async fn lock_file(path: PathBuf) -> Result<std::fs::File> {
    tokio::task::spawn_blocking(move || {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: flock takes a descriptor `file` owns for the whole call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("locking {}", path.display()));
        }
        Ok(file)
    })
    .await?
}

/// Where the static busybox is.
fn find_busybox() -> Result<PathBuf> {
    for candidate in ["/bin/busybox", "/usr/bin/busybox", "/usr/sbin/busybox"] {
        let path = Path::new(candidate);
        if path.is_file() {
            return Ok(path.to_path_buf());
        }
    }
    bail!("no busybox found (Debian package `busybox-static`)")
}

/// `Some(true)` for an ELF64 executable without an interpreter (statically
/// linked), `Some(false)` with one, `None` when it is not an ELF64 file.
fn is_static_elf(bytes: &[u8]) -> Option<bool> {
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 {
        return None;
    }
    let little = bytes[5] == 1;
    let u16_at = |at: usize| -> Option<u64> {
        let b: [u8; 2] = bytes.get(at..at + 2)?.try_into().ok()?;
        Some(u64::from(if little {
            u16::from_le_bytes(b)
        } else {
            u16::from_be_bytes(b)
        }))
    };
    let u32_at = |at: usize| -> Option<u32> {
        let b: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
        Some(if little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    };
    let u64_at = |at: usize| -> Option<u64> {
        let b: [u8; 8] = bytes.get(at..at + 8)?.try_into().ok()?;
        Some(if little {
            u64::from_le_bytes(b)
        } else {
            u64::from_be_bytes(b)
        })
    };
    let (phoff, phentsize, phnum) = (u64_at(0x20)?, u16_at(0x36)?, u16_at(0x38)?);
    const PT_INTERP: u32 = 3;
    for i in 0..phnum {
        let at = usize::try_from(phoff + i * phentsize).ok()?;
        if u32_at(at)? == PT_INTERP {
            return Some(false);
        }
    }
    Some(true)
}

async fn build_image(tag: &str) -> Result<()> {
    let busybox = find_busybox()?;
    let binary = tokio::fs::read(&busybox).await?;
    if is_static_elf(&binary) == Some(false) {
        bail!(
            "{} is dynamically linked and cannot run alone in an image; install Debian package `busybox-static`",
            busybox.display()
        );
    }
    let list = Command::new(&busybox)
        .arg("--list")
        .output()
        .await
        .with_context(|| format!("running `{} --list`", busybox.display()))?;
    if !list.status.success() {
        bail!("`{} --list` failed", busybox.display());
    }
    let applets = String::from_utf8_lossy(&list.stdout).into_owned();

    let tmp = tempfile::tempdir()?;
    let root = tmp.path().join("rootfs");
    let bin = root.join("bin");
    for dir in ["bin", "etc", "tmp", "root"] {
        std::fs::create_dir_all(root.join(dir))?;
    }
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
    std::fs::write(bin.join("busybox"), &binary)?;
    std::fs::set_permissions(bin.join("busybox"), std::fs::Permissions::from_mode(0o755))?;
    for applet in applets.lines().map(str::trim) {
        if applet.is_empty() || applet == "busybox" || applet.contains('/') {
            continue;
        }
        symlink("busybox", bin.join(applet))?;
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )?;
    std::fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;

    let tarball = tmp.path().join("rootfs.tar");
    let tar = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tarball)
        .arg(".")
        .output()
        .await
        .context("running `tar`")?;
    if !tar.status.success() {
        bail!("tar failed: {}", String::from_utf8_lossy(&tar.stderr));
    }
    let import = Command::new("docker")
        .arg("import")
        .arg("--change")
        .arg("ENV PATH=/bin")
        .arg(&tarball)
        .arg(tag)
        .output()
        .await
        .context("running `docker import`")?;
    if !import.status.success() {
        bail!(
            "`docker import` of {tag} failed: {}",
            String::from_utf8_lossy(&import.stderr).trim()
        );
    }
    tracing::info!(tag, "built test image");
    Ok(())
}

#[cfg(test)]
mod tests {
    type TestResult = Result<(), Box<dyn std::error::Error>>;
    use super::*;

    #[test]
    fn tells_static_from_dynamic_executables() -> TestResult {
        // This test binary links libc dynamically on Debian; busybox-static does not.
        let me = std::fs::read(std::env::current_exe()?)?;
        assert_eq!(is_static_elf(&me), Some(false));
        assert_eq!(is_static_elf(b"#!/bin/sh\n"), None);
        if let Ok(busybox) = find_busybox() {
            let bytes = std::fs::read(busybox)?;
            assert!(is_static_elf(&bytes).is_some());
        }
        Ok(())
    }
}
