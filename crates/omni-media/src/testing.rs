//! A real local S3-compatible server for tests: moto from PyPI (`moto[server]`), which
//! `make deps` installs into the repository's `.venv`. Tests that need it fail, never skip,
//! when it is missing. Built for this crate's tests and, with the `testing` feature, for the
//! end-to-end tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::S3Settings;
use omni_core::Secret;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A moto S3 server on a free 127.0.0.1 port, killed on drop.
pub struct Moto {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
}

impl Moto {
    /// Starts moto and waits (bounded) until it answers HTTP. `env` configures it, e.g.
    /// `INITIAL_NO_AUTH_ACTION_COUNT=0` to check credentials.
    pub async fn start(env: &[(&str, &str)]) -> Self {
        let bin = std::env::var_os("MOTO_SERVER")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/moto_server")
            });
        assert!(
            bin.exists(),
            "moto_server not found at {}: run `make deps` (it installs moto[server] into \
             .venv) or set MOTO_SERVER to its path",
            bin.display()
        );
        // The port is free when picked but may be taken (as some outgoing connection's source
        // port) before moto binds it; moto then exits, and it is started again on another.
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let child = Command::new(&bin)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
            let mut moto = Self {
                child,
                endpoint: format!("http://127.0.0.1:{port}"),
            };
            if moto.answers().await {
                return moto;
            }
        }
        panic!("moto_server exited before answering, five times");
    }

    /// Waits (bounded) until moto answers HTTP; false when it exited first.
    async fn answers(&mut self) -> bool {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if client.get(&self.endpoint).send().await.is_ok() {
                return true;
            }
            if self.child.try_wait().unwrap().is_some() {
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not answer in 60 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Creates a bucket whose objects anyone may read (as a public media bucket or a CDN's
    /// origin is), with plain unsigned requests (moto accepts them without credentials).
    pub async fn create_bucket(&self, bucket: &str) {
        let client = reqwest::Client::new();
        let response = client
            .put(format!("{}/{bucket}", self.endpoint))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{response:?}");
        let policy = serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Effect": "Allow",
                "Principal": "*",
                "Action": "s3:GetObject",
                "Resource": format!("arn:aws:s3:::{bucket}/*"),
            }],
        });
        let response = client
            .put(format!("{}/{bucket}?policy", self.endpoint))
            .body(policy.to_string())
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{response:?}");
    }

    /// S3 settings for `bucket` on this server, public at `<endpoint>/<bucket>`.
    pub fn settings(&self, bucket: &str) -> S3Settings {
        S3Settings {
            bucket: bucket.into(),
            region: "us-east-1".into(),
            endpoint: Some(self.endpoint.clone()),
            access_key_id: "test-key".into(),
            secret_access_key: Secret::new("test-secret"),
            allow_http: true,
            virtual_hosted_style: false,
            public_base_url: format!("{}/{bucket}", self.endpoint),
            timeout: Duration::from_secs(10),
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
