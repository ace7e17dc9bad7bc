//! From a store URL to a [`Store`]: the backend its scheme names, with the
//! settings of the process environment (`AWS_*`, …) and of the caller, and
//! a retry policy for requests that fail in a way that may pass.
//!
//! S3 is always built in; `gs://` and `az://` need the `cloud` feature.
//! Every HTTPS backend uses rustls with ring, installed here as the process's
//! crypto provider: the same one NATS uses, so no second C crypto library is
//! built and rustls never has two providers to choose from.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{BackoffConfig, ObjectStore, ObjectStoreScheme, RetryConfig};
use url::Url;

use crate::{ArtifactError, Store};

/// How a request that failed in a way that may pass (connection refused or
/// reset, a timeout, HTTP 5xx or 429) is retried: with exponential backoff
/// from [`RetryPolicy::FIRST_BACKOFF`], doubling up to
/// [`RetryPolicy::MAX_BACKOFF`] (or a sixth of `timeout` when that is
/// shorter, so a short window still sees several tries), until `max_retries`
/// retries were made or `timeout` has passed since the first try. Applies to
/// each request, e.g. each part of a multipart upload. `file://` stores do
/// not retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_retries: usize,
    pub timeout: Duration,
}

impl RetryPolicy {
    pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);
    pub const MAX_BACKOFF: Duration = Duration::from_secs(15);
    /// Rides out a store restart or a short network outage; stays under the
    /// 5 minutes after which a signed request may no longer be accepted.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3 * 60);
    pub const DEFAULT_MAX_RETRIES: usize = 10;

    /// `object_store`'s form of the policy.
    pub fn config(&self) -> RetryConfig {
        let max_backoff = (self.timeout / 6).clamp(Self::FIRST_BACKOFF, Self::MAX_BACKOFF);
        RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Self::FIRST_BACKOFF,
                max_backoff,
                base: 2.0,
            },
            max_retries: self.max_retries,
            retry_timeout: self.timeout,
        }
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: Self::DEFAULT_MAX_RETRIES,
            timeout: Self::DEFAULT_TIMEOUT,
        }
    }
}

/// What [`open_with`] needs besides the URL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreOptions {
    /// Backend settings that take precedence over the process environment,
    /// named as `object_store` reads them from it (`AWS_ENDPOINT`,
    /// `AWS_ACCESS_KEY_ID`, `AWS_ALLOW_HTTP`, …; case does not matter).
    /// Keys the backend does not know are ignored.
    pub settings: Vec<(String, String)>,
    pub retry: RetryPolicy,
}

/// Opens the object store named by `url` with the default retry policy;
/// cloud backends read their credentials and settings from the process
/// environment (`AWS_*`, `GOOGLE_*`, `AZURE_*`), as `object_store` documents.
pub async fn open(url: &str) -> Result<Store, ArtifactError> {
    open_with(url, &StoreOptions::default()).await
}

/// Opens the object store named by `url` with `options`.
pub async fn open_with(url: &str, options: &StoreOptions) -> Result<Store, ArtifactError> {
    let parsed = Url::parse(url).map_err(|e| ArtifactError::InvalidUrl {
        url: url.to_owned(),
        reason: format!("{e} (a local directory is written file:///abs/dir)"),
    })?;
    let unsupported = |reason: String| ArtifactError::UnsupportedScheme {
        url: url.to_owned(),
        reason,
    };
    let (scheme, path) =
        ObjectStoreScheme::parse(&parsed).map_err(|e| unsupported(e.to_string()))?;

    if scheme == ObjectStoreScheme::Local {
        return open_local(url, &parsed).await;
    }

    let prefix = ObjectPath::parse(path).map_err(|e| ArtifactError::InvalidUrl {
        url: url.to_owned(),
        reason: e.to_string(),
    })?;
    install_crypto_provider();
    let retry = options.retry.config();
    let settings = lowercase(&options.settings);
    // The builders share no trait: the same steps for each, by macro.
    macro_rules! build {
        ($builder:ty, $key:ty) => {{
            let mut builder = <$builder>::from_env().with_url(url);
            for (key, value) in &settings {
                if let Ok(key) = key.parse::<$key>() {
                    builder = builder.with_config(key, value);
                }
            }
            let store = builder
                .with_retry(retry)
                .build()
                .map_err(|e| unsupported(e.to_string()))?;
            Arc::new(store)
        }};
    }
    let inner: Arc<dyn ObjectStore> = match scheme {
        ObjectStoreScheme::AmazonS3 => build!(AmazonS3Builder, AmazonS3ConfigKey),
        #[cfg(feature = "cloud")]
        ObjectStoreScheme::GoogleCloudStorage => build!(
            object_store::gcp::GoogleCloudStorageBuilder,
            object_store::gcp::GoogleConfigKey
        ),
        #[cfg(feature = "cloud")]
        ObjectStoreScheme::MicrosoftAzure => build!(
            object_store::azure::MicrosoftAzureBuilder,
            object_store::azure::AzureConfigKey
        ),
        // For tests and demos: lives as long as the process, shared by no one.
        ObjectStoreScheme::Memory => Arc::new(object_store::memory::InMemory::new()),
        #[cfg(not(feature = "cloud"))]
        ObjectStoreScheme::GoogleCloudStorage | ObjectStoreScheme::MicrosoftAzure => {
            return Err(unsupported(
                "gs:// and az:// stores need drover built with `--features cloud`".to_owned(),
            ))
        }
        other => return Err(unsupported(format!("{other:?} is not an artifact store"))),
    };
    Ok(Store {
        inner,
        prefix,
        url: url.to_owned(),
    })
}

async fn open_local(url: &str, parsed: &Url) -> Result<Store, ArtifactError> {
    let dir = parsed
        .to_file_path()
        .map_err(|()| ArtifactError::InvalidUrl {
            url: url.to_owned(),
            reason: "a file url must name an absolute local directory".to_owned(),
        })?;
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| ArtifactError::io("creating store directory", &dir, e))?;
    let local = LocalFileSystem::new_with_prefix(&dir).map_err(|e| ArtifactError::InvalidUrl {
        url: url.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(Store {
        inner: Arc::new(local.with_automatic_cleanup(true)),
        prefix: ObjectPath::default(),
        url: url.to_owned(),
    })
}

/// Config keys are matched in lowercase, as `from_env` does with variable names.
fn lowercase(settings: &[(String, String)]) -> Vec<(String, String)> {
    settings
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect()
}

/// Makes ring the process's rustls crypto provider unless one is already set.
fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Err: another thread installed one first, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_by_a_sixth_of_a_short_window_and_by_fifteen_seconds() {
        let short = RetryPolicy {
            max_retries: 50,
            timeout: Duration::from_secs(3),
        }
        .config();
        assert_eq!(short.backoff.max_backoff, Duration::from_millis(500));
        assert_eq!(short.retry_timeout, Duration::from_secs(3));
        assert_eq!(short.max_retries, 50);
        let default = RetryPolicy::default().config();
        assert_eq!(default.backoff.max_backoff, Duration::from_secs(15));
        assert_eq!(default.backoff.init_backoff, Duration::from_millis(100));
        let tiny = RetryPolicy {
            max_retries: 1,
            timeout: Duration::from_millis(10),
        }
        .config();
        assert_eq!(tiny.backoff.max_backoff, RetryPolicy::FIRST_BACKOFF);
    }

    #[tokio::test]
    async fn an_s3_url_opens_with_its_bucket_and_prefix_and_explicit_settings() {
        let options = StoreOptions {
            settings: vec![
                ("AWS_ENDPOINT".to_owned(), "http://127.0.0.1:9".to_owned()),
                ("AWS_ALLOW_HTTP".to_owned(), "true".to_owned()),
                ("AWS_REGION".to_owned(), "garage".to_owned()),
                ("AWS_ACCESS_KEY_ID".to_owned(), "GK00".to_owned()),
                ("AWS_SECRET_ACCESS_KEY".to_owned(), "secret".to_owned()),
                ("not_a_setting".to_owned(), "ignored".to_owned()),
            ],
            retry: RetryPolicy::default(),
        };
        let store = open_with("s3://bucket/some/prefix", &options)
            .await
            .expect("opens");
        assert_eq!(store.prefix.as_ref(), "some/prefix");
        assert_eq!(store.url(), "s3://bucket/some/prefix");
    }

    #[tokio::test]
    async fn cloud_schemes_without_the_feature_say_how_to_get_them() {
        let err = open("gs://bucket/x").await.map(drop);
        if cfg!(feature = "cloud") {
            return;
        }
        let err = err.expect_err("refused").to_string();
        assert!(err.contains("--features cloud"), "{err}");
    }
}
