//! A real S3 server for tests and benches: s3s-fs (the s3s project's S3 over a folder) serving
//! `root` on 127.0.0.1 from a thread of this process, with one bucket and one key pair.

use std::net::SocketAddr;
use std::path::Path;

/// Starts the server (it lives as long as the process) and returns its address.
pub fn start(root: &Path, bucket: &str, key: &str, secret: &str) -> SocketAddr {
    std::fs::create_dir_all(root.join(bucket)).unwrap();
    let fs = s3s_fs::FileSystem::new(root).unwrap();
    let mut b = s3s::service::S3ServiceBuilder::new(fs);
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
