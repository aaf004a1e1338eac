//! One remote's storage through the `object_store` crate: a folder (`LocalFileSystem`) or an
//! S3-compatible bucket (`AmazonS3`, configured from the usual AWS environment variables), used
//! synchronously from a small tokio runtime of its own.

use anyhow::{anyhow, bail, Context, Result};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use std::sync::Arc;

/// Where a remote lives, parsed from its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Folder(std::path::PathBuf),
    S3 { bucket: String, prefix: String },
}

impl Location {
    /// `s3://bucket/prefix`, `file:///abs/path` or a plain path (relative to `base`).
    pub fn parse(url: &str, base: &std::path::Path) -> Result<Location> {
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                bail!("{url}: an S3 URL names a bucket: s3://BUCKET[/PREFIX]");
            }
            return Ok(Location::S3 {
                bucket: bucket.into(),
                prefix: prefix.trim_matches('/').into(),
            });
        }
        if let Some((scheme, _)) = url.split_once("://") {
            if scheme != "file" {
                bail!("{url}: remotes are folders (a path or file://) or S3 buckets (s3://)");
            }
        }
        let path = std::path::PathBuf::from(url.strip_prefix("file://").unwrap_or(url));
        Ok(Location::Folder(if path.is_absolute() {
            path
        } else {
            base.join(path)
        }))
    }
}

/// A remote's storage.
pub struct Backend {
    store: Arc<dyn ObjectStore>,
    runtime: tokio::runtime::Runtime,
    /// Shown in errors.
    url: String,
}

/// What a conditional put found.
#[derive(Debug, PartialEq, Eq)]
pub enum Created {
    Yes,
    AlreadyThere,
}

impl Backend {
    /// Opens the storage at `location`; a folder is created when `create` is set.
    pub fn open(location: &Location, url: &str, create: bool) -> Result<Backend> {
        let store: Arc<dyn ObjectStore> = match location {
            Location::Folder(dir) => {
                if create {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("creating the remote folder {}", dir.display()))?;
                } else if !dir.is_dir() {
                    bail!("remote {url}: no folder {}", dir.display());
                }
                Arc::new(
                    object_store::local::LocalFileSystem::new_with_prefix(dir)
                        .map_err(|e| anyhow!("remote {url}: {e}"))?,
                )
            }
            Location::S3 { bucket, prefix } => {
                use object_store::aws::AmazonS3ConfigKey;
                use object_store::ClientConfigKey;
                // Short waits: a wrong endpoint should fail in seconds, not after 10 retries.
                // (Set as config keys: replacing the client options would drop AWS_ALLOW_HTTP.)
                let s3 = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_conditional_put(object_store::aws::S3ConditionalPut::ETagMatch)
                    .with_config(
                        AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
                        "5s",
                    )
                    .with_retry(object_store::RetryConfig {
                        max_retries: 2,
                        retry_timeout: std::time::Duration::from_secs(10),
                        ..Default::default()
                    })
                    .build()
                    .map_err(|e| anyhow!("remote {url}: {e}"))?;
                if prefix.is_empty() {
                    Arc::new(s3)
                } else {
                    Arc::new(object_store::prefix::PrefixStore::new(s3, prefix.as_str()))
                }
            }
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        Ok(Backend {
            store,
            runtime,
            url: url.into(),
        })
    }

    fn fail(&self, what: &str, e: object_store::Error) -> anyhow::Error {
        anyhow!("remote {}: {what}: {}", self.url, explain(&e))
    }

    /// The bytes at `key`, or None when there is nothing there.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let store = self.store.clone();
        let k = Key::from(key);
        self.runtime.block_on(async move {
            match store.get(&k).await {
                Ok(r) => Ok(Some(
                    r.bytes().await.map_err(|e| self.fail(key, e))?.to_vec(),
                )),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(self.fail(key, e)),
            }
        })
    }

    /// The bytes of many keys, `jobs` at a time, in the order given; `each` is called as each
    /// arrives.
    pub fn get_many(
        &self,
        keys: &[String],
        jobs: usize,
        each: &(dyn Fn(usize, Option<Vec<u8>>) -> Result<()> + Sync),
    ) -> Result<()> {
        let store = self.store.clone();
        self.runtime.block_on(async {
            let mut s = futures::stream::iter(keys.iter().enumerate())
                .map(|(i, key)| {
                    let store = store.clone();
                    async move {
                        let r = match store.get(&Key::from(key.as_str())).await {
                            Ok(r) => r.bytes().await.map(|b| Some(b.to_vec())),
                            Err(object_store::Error::NotFound { .. }) => Ok(None),
                            Err(e) => Err(e),
                        };
                        (i, r)
                    }
                })
                .buffer_unordered(jobs.max(1));
            while let Some((i, r)) = s.next().await {
                each(i, r.map_err(|e| self.fail(&keys[i], e))?)?;
            }
            Ok(())
        })
    }

    /// Byte ranges of keys: for each request (a key and its ranges, each within the object),
    /// `each(i, bytes of every range)`; `jobs` keys at a time, near ranges fetched together.
    /// `each` runs on a thread of its own, so downloads go on while it checks what arrived.
    pub fn get_ranges_many(
        &self,
        requests: &[(String, Vec<std::ops::Range<u64>>)],
        jobs: usize,
        each: &(dyn Fn(usize, Vec<Vec<u8>>) -> Result<()> + Sync),
    ) -> Result<()> {
        let store = self.store.clone();
        std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<(usize, Vec<Vec<u8>>)>(1);
            let consumer = scope.spawn(move || -> Result<()> {
                for (i, parts) in rx {
                    each(i, parts)?;
                }
                Ok(())
            });
            let downloaded = self.runtime.block_on(async {
                let mut s = futures::stream::iter(requests.iter().enumerate())
                    .map(|(i, (key, ranges))| {
                        let store = store.clone();
                        async move {
                            let r = store.get_ranges(&Key::from(key.as_str()), ranges).await;
                            (i, r)
                        }
                    })
                    .buffer_unordered(jobs.max(1));
                while let Some((i, r)) = s.next().await {
                    let parts = r.map_err(|e| self.fail(&requests[i].0, e))?;
                    let parts = parts.into_iter().map(|b| b.to_vec()).collect();
                    if tx.send((i, parts)).is_err() {
                        // The consumer stopped on an error, which it returns below.
                        break;
                    }
                }
                Ok::<_, anyhow::Error>(())
            });
            drop(tx);
            let checked = consumer.join().expect("the consumer thread does not panic");
            checked.and(downloaded)
        })
    }

    /// Writes `bytes` at `key` (replacing what was there).
    pub fn put(&self, key: &str, bytes: Vec<u8>) -> Result<()> {
        let store = self.store.clone();
        self.runtime.block_on(async move {
            store
                .put(&Key::from(key), PutPayload::from(bytes))
                .await
                .map(|_| ())
                .map_err(|e| self.fail(key, e))
        })
    }

    /// Writes the bytes `load(i)` at `keys[i]` for every i, `jobs` at a time (each loaded
    /// only when its upload starts); `done(i, bytes)` is called after each.
    pub fn put_many(
        &self,
        keys: &[String],
        jobs: usize,
        load: &(dyn Fn(usize) -> Result<Vec<u8>> + Sync),
        done: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<()> {
        self.put_groups(
            keys.len(),
            jobs,
            &|i| Ok(vec![(keys[i].clone(), load(i)?)]),
            &|i, _, n| done(i, n),
        )
    }

    /// Writes `n` groups of keys, `jobs` groups at a time, the keys of a group one after the
    /// other in their order (group i is loaded by `load(i)` when its upload starts);
    /// `done(i, k, bytes)` is called after key k of group i has been written.
    pub fn put_groups(
        &self,
        n: usize,
        jobs: usize,
        load: &(dyn Fn(usize) -> Result<Vec<(String, Vec<u8>)>> + Sync),
        done: &(dyn Fn(usize, usize, usize) + Sync),
    ) -> Result<()> {
        let store = self.store.clone();
        self.runtime.block_on(async {
            let mut s = futures::stream::iter(0..n)
                .map(|i| {
                    let store = store.clone();
                    async move {
                        for (k, (key, bytes)) in load(i)?.into_iter().enumerate() {
                            let len = bytes.len();
                            store
                                .put(&Key::from(key.as_str()), PutPayload::from(bytes))
                                .await
                                .map_err(|e| self.fail(&key, e))?;
                            done(i, k, len);
                        }
                        Ok::<_, anyhow::Error>(())
                    }
                })
                .buffer_unordered(jobs.max(1));
            while let Some(r) = s.next().await {
                r?;
            }
            Ok(())
        })
    }

    /// Writes `bytes` at `key` only if nothing is there yet: atomic on both backends (a folder
    /// links a finished temp file to the name, which fails if it exists; S3 sends
    /// `If-None-Match: *`).
    pub fn create(&self, key: &str, bytes: Vec<u8>) -> Result<Created> {
        let store = self.store.clone();
        self.runtime.block_on(async move {
            let opts = PutOptions {
                mode: PutMode::Create,
                ..Default::default()
            };
            match store
                .put_opts(&Key::from(key), PutPayload::from(bytes), opts)
                .await
            {
                Ok(_) => Ok(Created::Yes),
                Err(object_store::Error::AlreadyExists { .. })
                | Err(object_store::Error::Precondition { .. }) => Ok(Created::AlreadyThere),
                Err(e) => Err(self.fail(key, e)),
            }
        })
    }

    /// Whether this storage refuses a create-if-absent put where something already is, as
    /// [`Backend::create`] needs for a branch to move atomically. Asked of the storage itself:
    /// some S3 servers (Garage 2.5, for one) ignore `If-None-Match` and overwrite. Writes,
    /// then removes, one small key under `probes/`; where the credentials may write but not
    /// delete (a common safeguard on lab buckets) the key stays, and that is all.
    pub fn refuses_second_create(&self) -> Result<bool> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let key = format!("probes/{}-{nanos}", std::process::id());
        let first = self.create(&key, b"1".to_vec())?;
        let second = self.create(&key, b"2".to_vec())?;
        let _ = self.delete(&key);
        Ok(first == Created::Yes && second == Created::AlreadyThere)
    }

    /// Removes `key` (nothing there is not an error).
    pub fn delete(&self, key: &str) -> Result<()> {
        let store = self.store.clone();
        self.runtime.block_on(async move {
            match store.delete(&Key::from(key)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(self.fail(key, e)),
            }
        })
    }

    /// Every key under `prefix` (a folder-like path without a trailing slash).
    pub fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let store = self.store.clone();
        let p = Key::from(prefix);
        self.runtime.block_on(async move {
            store
                .list(Some(&p))
                .map_ok(|m| m.location.to_string())
                .try_collect::<Vec<String>>()
                .await
                .map_err(|e| self.fail(&format!("listing {prefix}/"), e))
        })
    }
}

/// What a user can act on, for the usual failures; otherwise the error on one line.
fn explain(e: &object_store::Error) -> String {
    let text = e.to_string();
    let code = [
        "SignatureDoesNotMatch",
        "InvalidAccessKeyId",
        "NotSignedUp",
        "AccessDenied",
    ]
    .into_iter()
    .find(|c| text.contains(c));
    if let Some(code) = code {
        return format!(
            "access denied ({code}): check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        );
    }
    if text.contains("NoSuchBucket") {
        return "the bucket does not exist (NoSuchBucket)".into();
    }
    if text.contains("error sending request") || text.contains("onnection refused") {
        let endpoint = std::env::var("AWS_ENDPOINT_URL")
            .or_else(|_| std::env::var("AWS_ENDPOINT"))
            .unwrap_or_else(|_| "the default AWS endpoint".into());
        return format!("cannot reach {endpoint} (is the server up? AWS_ENDPOINT_URL says where)");
    }
    one_line(e)
}

/// An object_store error on one line, shortened.
fn one_line(e: &object_store::Error) -> String {
    let text = e.to_string();
    let mut first = text.lines().next().unwrap_or_default().to_string();
    if first.len() > 300 {
        first.truncate(300);
        first.push('…');
    }
    first
}
