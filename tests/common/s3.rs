//! A real S3 server for tests and benches: s3s-fs (the s3s project's S3 over a folder) serving
//! `root` on 127.0.0.1 from a thread of this process, with one bucket and one key pair.

#![allow(dead_code)]

use s3s::dto::*;
use s3s::{S3Request, S3Response, S3Result, S3};
use std::net::SocketAddr;
use std::path::Path;

/// Starts the server (it lives as long as the process) and returns its address.
pub fn start(root: &Path, bucket: &str, key: &str, secret: &str) -> SocketAddr {
    std::fs::create_dir_all(root.join(bucket)).unwrap();
    serve(s3s_fs::FileSystem::new(root).unwrap(), key, secret)
}

/// How a server started by [`start_with`] departs from s3s-fs, as some S3 servers do.
#[derive(Clone, Copy, Default)]
pub struct Quirks {
    /// Ignores conditional writes (`If-None-Match`, `If-Match` on PUT) and overwrites, as
    /// Garage 2.5 and S3 itself before 2024 do.
    pub ignores_conditions: bool,
    /// Answers every delete with AccessDenied, as a bucket whose policy allows writes but not
    /// deletes does.
    pub refuses_deletes: bool,
}

/// As [`start`], with the quirks given.
pub fn start_with(root: &Path, bucket: &str, key: &str, secret: &str, q: Quirks) -> SocketAddr {
    std::fs::create_dir_all(root.join(bucket)).unwrap();
    serve(
        Quirky(s3s_fs::FileSystem::new(root).unwrap(), q),
        key,
        secret,
    )
}

/// s3s-fs with quirks; the calls object_store makes, passed on.
struct Quirky(s3s_fs::FileSystem, Quirks);

#[async_trait::async_trait]
impl S3 for Quirky {
    async fn put_object(
        &self,
        mut req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        if self.1.ignores_conditions {
            req.input.if_none_match = None;
            req.input.if_match = None;
        }
        self.0.put_object(req).await
    }
    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        self.0.get_object(req).await
    }
    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        self.0.head_object(req).await
    }
    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        if self.1.refuses_deletes {
            return Err(s3s::s3_error!(AccessDenied));
        }
        self.0.delete_object(req).await
    }
    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        if self.1.refuses_deletes {
            return Err(s3s::s3_error!(AccessDenied));
        }
        self.0.delete_objects(req).await
    }
    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        self.0.list_objects_v2(req).await
    }
    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.0.head_bucket(req).await
    }
}

fn serve(s3: impl S3, key: &str, secret: &str) -> SocketAddr {
    let mut b = s3s::service::S3ServiceBuilder::new(s3);
    b.set_auth(s3s::auth::SimpleAuth::from_single(key, secret));
    let service = b.build();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            let http =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    continue;
                };
                // Without it a small GET reply waits for the client's delayed ACK (~40 ms).
                let _ = sock.set_nodelay(true);
                let conn = http
                    .serve_connection(hyper_util::rt::TokioIo::new(sock), service.clone())
                    .into_owned();
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
        });
    });
    rx.recv().unwrap()
}
