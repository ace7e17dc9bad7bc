//! Round trips through a real `file://` store in a temp directory.

use std::io::Write;

use bytes::Bytes;
use drover_artifacts::{open, ArtifactError};
use futures::TryStreamExt;

fn file_url(dir: &std::path::Path) -> String {
    format!("file://{}", dir.display())
}

#[tokio::test]
async fn upload_then_download_roundtrips_with_sha256() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    // The store directory does not exist yet: open creates it.
    let store = open(&file_url(&tmp.path().join("store/nested"))).await?;

    let src = tmp.path().join("hello.txt");
    std::fs::write(&src, b"hello world\n")?;
    let info = store
        .upload_file("runs/r1/prep/1/outputs/data", &src)
        .await?;
    assert_eq!(info.key, "runs/r1/prep/1/outputs/data");
    assert_eq!(info.size, 12);
    // sha256("hello world\n")
    assert_eq!(
        info.sha256,
        "a948904f2f0f479b8f8197694b30184b0d2ed1c1cd2a1ec0fb85d299a192a447"
    );
    // Nested keys are nested directories on disk.
    assert!(tmp
        .path()
        .join("store/nested/runs/r1/prep/1/outputs/data")
        .is_file());

    let dest = tmp.path().join("out/deeper/hello.txt");
    let n = store.download_file(&info.key, &dest).await?;
    assert_eq!(n, 12);
    assert_eq!(std::fs::read(&dest)?, b"hello world\n");
    Ok(())
}

#[tokio::test]
async fn large_file_streams_through_multipart() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let store = open(&file_url(tmp.path())).await?;
    // Larger than the 10 MiB buffer, so the upload goes multipart.
    let src = tmp.path().join("big.bin");
    let mut f = std::fs::File::create(&src)?;
    let block: Vec<u8> = (0..=255u8).cycle().take(1024 * 1024).collect();
    for _ in 0..12 {
        f.write_all(&block)?;
    }
    drop(f);
    let expected = {
        use sha2::Digest;
        let data = std::fs::read(&src)?;
        sha2::Sha256::digest(&data)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };

    let info = store.upload_file("big/blob", &src).await?;
    assert_eq!(info.size, 12 * 1024 * 1024);
    assert_eq!(info.sha256, expected);

    let chunks: Vec<Bytes> = store
        .get_bytes_stream("big/blob")
        .await?
        .try_collect()
        .await?;
    let total: usize = chunks.iter().map(|c| c.len()).sum();
    assert_eq!(total, 12 * 1024 * 1024);
    Ok(())
}

#[tokio::test]
async fn missing_key_is_not_found() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let store = open(&file_url(tmp.path())).await?;

    match store.get_bytes_stream("no/such/key").await {
        Err(ArtifactError::NotFound { key }) => assert_eq!(key, "no/such/key"),
        Err(other) => panic!("expected NotFound, got {other}"),
        Ok(_) => panic!("expected NotFound, got a stream"),
    }
    let dest = tmp.path().join("dest");
    let err = store.download_file("no/such/key", &dest).await.unwrap_err();
    assert!(matches!(err, ArtifactError::NotFound { .. }), "{err}");
    assert!(!dest.exists());
    Ok(())
}

#[tokio::test]
async fn put_and_get_bytes() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let store = open(&file_url(tmp.path())).await?;
    let info = store.put_bytes("a/b/c", Bytes::from_static(b"abc")).await?;
    assert_eq!(
        info.sha256,
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(store.get_bytes("a/b/c").await?, Bytes::from_static(b"abc"));
    Ok(())
}

#[tokio::test]
async fn bad_keys_and_urls_are_refused() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let store = open(&file_url(tmp.path())).await?;
    for key in ["", "a//b", "../escape", "/abs", "a/./b"] {
        let err = store.get_bytes(key).await.unwrap_err();
        assert!(
            matches!(err, ArtifactError::InvalidKey { .. }),
            "{key:?}: {err}"
        );
    }

    let err = open("ftp://host/dir").await.unwrap_err();
    assert!(
        matches!(err, ArtifactError::UnsupportedScheme { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("ftp://host/dir"), "{err}");

    // A bucket is required; S3 itself is always built in.
    let err = open("s3:///prefix").await.unwrap_err();
    assert!(err.to_string().contains("s3:///prefix"), "{err}");

    let err = open("not a url").await.unwrap_err();
    assert!(matches!(err, ArtifactError::InvalidUrl { .. }), "{err}");
    Ok(())
}

#[tokio::test]
async fn memory_url_works_through_parse_url() -> anyhow::Result<()> {
    let store = open("memory:///some/prefix").await?;
    store.put_bytes("k", Bytes::from_static(b"v")).await?;
    assert_eq!(store.get_bytes("k").await?, Bytes::from_static(b"v"));
    Ok(())
}

#[tokio::test]
async fn a_stream_from_an_offset_has_the_rest_and_nothing_at_the_end() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let store = open(&file_url(tmp.path())).await?;
    store
        .put_bytes("log", Bytes::from_static(b"0123456789"))
        .await?;
    for (offset, rest) in [
        (0, &b"0123456789"[..]),
        (1, b"123456789"),
        (7, b"789"),
        (10, b""),
    ] {
        let chunks: Vec<Bytes> = store
            .get_bytes_stream_from("log", offset)
            .await?
            .try_collect()
            .await?;
        assert_eq!(chunks.concat(), rest, "from {offset}");
        assert!(chunks.iter().all(|c| !c.is_empty()), "from {offset}");
    }
    assert!(matches!(
        store.get_bytes_stream_from("missing", 3).await,
        Err(ArtifactError::NotFound { .. })
    ));
    Ok(())
}

#[tokio::test]
async fn a_verified_download_matches_or_is_removed_as_corrupt() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let store = open(&file_url(&tmp.path().join("store"))).await?;
    let src = tmp.path().join("data");
    std::fs::write(&src, b"the real bytes")?;
    let info = store.upload_file("out/data", &src).await?;

    let dest = tmp.path().join("in/data");
    assert_eq!(
        store
            .download_verified("out/data", &dest, &info.sha256)
            .await?,
        14
    );
    assert_eq!(std::fs::read(&dest)?, b"the real bytes");

    // Other bytes under the same key: refused, and nothing left on disk.
    store
        .put_bytes("out/data", Bytes::from_static(b"other bytes"))
        .await?;
    let dest = tmp.path().join("in/again");
    let err = store
        .download_verified("out/data", &dest, &info.sha256)
        .await
        .unwrap_err();
    let got = drover_artifacts::sha256_hex(b"other bytes");
    match &err {
        ArtifactError::Corrupt { key, want, got: g } => {
            assert_eq!(key, "out/data");
            assert_eq!(want, &info.sha256);
            assert_eq!(g, &got);
        }
        other => panic!("not Corrupt: {other}"),
    }
    assert_eq!(
        err.to_string(),
        format!(
            "artifact `out/data` is corrupt: sha256 {} != {got}",
            info.sha256
        )
    );
    assert!(!dest.exists(), "a corrupt download was left at {dest:?}");

    // An unknown sha256 (a record from before it was kept) is not checked.
    assert_eq!(store.download_verified("out/data", &dest, "").await?, 11);

    // A missing object is NotFound, not Corrupt.
    store.delete("out/data").await?;
    assert!(!store.exists("out/data").await?);
    store.delete("out/data").await?;
    let err = store
        .download_verified("out/data", &tmp.path().join("in/gone"), &info.sha256)
        .await
        .unwrap_err();
    assert!(matches!(err, ArtifactError::NotFound { .. }), "{err}");
    Ok(())
}

#[tokio::test]
async fn an_unreachable_s3_store_is_retried_for_the_window_then_fails() -> anyhow::Result<()> {
    use drover_artifacts::{open_with, RetryPolicy, StoreOptions};
    use std::time::{Duration, Instant};
    // A port nothing listens on: every connection is refused at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let settings = [
        ("AWS_ENDPOINT", format!("http://127.0.0.1:{port}")),
        ("AWS_ALLOW_HTTP", "true".to_owned()),
        ("AWS_REGION", "garage".to_owned()),
        ("AWS_ACCESS_KEY_ID", "GK0123456789abcdef01234567".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "0".repeat(64)),
    ];
    let options = StoreOptions {
        settings: settings
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        retry: RetryPolicy {
            max_retries: 100,
            timeout: Duration::from_secs(2),
        },
    };
    let store = open_with("s3://bucket/prefix", &options).await?;
    let src = tempfile::NamedTempFile::new()?;
    std::fs::write(src.path(), b"x")?;
    let started = Instant::now();
    let err = store.upload_file("k", src.path()).await.unwrap_err();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(10),
        "failed after {took:?}: {err}"
    );
    assert!(err.to_string().contains("retries"), "{err}");
    Ok(())
}
