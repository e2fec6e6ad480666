//! Debian's headless chromium, driven over the DevTools protocol (TESTING.md): started with
//! `--remote-debugging-port=0`, its port read from `DevToolsActivePort`, the page's socket
//! found at `/json/list`, then `Page.navigate`, `Runtime.evaluate`, `Page.captureScreenshot`.

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A headless chromium and a DevTools session on its first page.
pub struct Chromium {
    child: Option<Child>,
    dir: tempfile::TempDir,
    page: Socket,
    next_id: u64,
}

/// The chromium binary (`CHROMIUM_BIN`, else Debian's `/usr/bin/chromium`).
pub fn chromium_bin() -> PathBuf {
    std::env::var("CHROMIUM_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("/usr/bin/chromium"))
}

impl Chromium {
    /// Starts chromium with a fresh profile and attaches to its page.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("chromium.log")).unwrap();
        let child = Command::new(chromium_bin())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--lang=vi-VN",
                "--window-size=1024,768",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", dir.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start chromium (apt-get install chromium)");
        let port_file = dir.path().join("DevToolsActivePort");
        // A cold start on a busy 2-core machine (the other test binaries' servers) can take
        // well over 20 s.
        let deadline = Instant::now() + Duration::from_secs(60);
        let port = loop {
            if let Some(p) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<u16>().ok()))
            {
                break p;
            }
            assert!(
                Instant::now() < deadline,
                "chromium did not start its DevTools server; its log:\n{}",
                std::fs::read_to_string(dir.path().join("chromium.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let mut page_url = None;
        while page_url.is_none() && Instant::now() < deadline {
            if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/json/list")).await {
                let list: serde_json::Value = r.json().await.unwrap_or_default();
                page_url = list.as_array().and_then(|targets| {
                    targets
                        .iter()
                        .find(|t| t["type"] == "page")
                        .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_owned))
                });
            }
            if page_url.is_none() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let page_url = page_url.expect("chromium lists no page");
        let (page, _) = tokio_tungstenite::connect_async(page_url).await.unwrap();
        Self {
            child: Some(child),
            dir,
            page,
            next_id: 1,
        }
    }

    /// Sends one DevTools command and returns its `result` (events in between are skipped).
    pub async fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        let id = self.next_id;
        self.next_id += 1;
        let msg = serde_json::json!({"id": id, "method": method, "params": params});
        self.page
            .send(Message::text(msg.to_string()))
            .await
            .unwrap();
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(30), self.page.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method}"))
                .expect("devtools socket closed")
                .unwrap();
            if let Message::Text(t) = frame {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                if v["id"] == id {
                    assert!(v.get("error").is_none(), "{method} failed: {v}");
                    return v["result"].clone();
                }
            }
        }
    }

    /// Navigates and waits until the document is complete.
    pub async fn navigate(&mut self, url: &str) {
        self.call("Page.enable", serde_json::json!({})).await;
        self.call("Page.navigate", serde_json::json!({"url": url}))
            .await;
        self.wait_for(
            "document.readyState === 'complete'",
            Duration::from_secs(20),
        )
        .await;
    }

    /// Evaluates `expression` in the page and returns its value (promises awaited).
    pub async fn eval(&mut self, expression: &str) -> serde_json::Value {
        let r = self
            .call(
                "Runtime.evaluate",
                serde_json::json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        r["result"]["value"].clone()
    }

    /// Polls `expression` until it is `true`.
    pub async fn wait_for(&mut self, expression: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.eval(expression).await == serde_json::Value::Bool(true) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "page never satisfied {expression}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&mut self) -> Vec<u8> {
        let r = self
            .call(
                "Page.captureScreenshot",
                serde_json::json!({"format": "png"}),
            )
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap_or_default())
            .unwrap()
    }

    /// chromium's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("chromium.log")).unwrap_or_default()
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            crate::stop_child(child, Duration::from_secs(3));
        }
    }
}
