//! Real mail servers for the e-mail tests: dovecot (IMAP + LMTP) and opensmtpd (SMTP, relaying
//! into dovecot's LMTP), on free 127.0.0.1 ports, configured as in TESTING.md.
//!
//! OAuth 2.0: dovecot also accepts `AUTHENTICATE XOAUTH2` / `OAUTHBEARER` (IMAP and its
//! submission service, which relays to smtpd) through a second passdb, `driver = oauth2`,
//! tried only for those mechanisms. It asks [`BearerTokens`]' introspection stand-in (RFC 7662
//! style, `introspection_mode = post`) whether a bearer token is active and whose it is; the
//! tests' token endpoints ([`TokenEndpoint`]) register the tokens they issue there. The
//! stand-in runs on a thread of its own, as the servers outlive any one test's runtime.
//!
//! Only one smtpd may run per machine (its spool and control socket are fixed paths), so the
//! servers are shared by the tests of a process: [`MailServer::shared`] hands out one
//! instance while any test holds it and stops both servers (SIGTERM by PID) when the last
//! holder drops it. Dovecot's static passdb lets every user log in with [`PASSWORD`], each with
//! its own maildir, so each test takes its own address from [`MailServer::address`].

use async_imap::Session;
use futures_util::TryStreamExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

use crate::{free_port, stop_child, wait_for_port};

pub use introspection::{BearerTokens, Introspected};
pub use token_endpoint::{TokenEndpoint, TokenRequest};

mod introspection;
mod token_endpoint;

/// Every test user's password.
pub const PASSWORD: &str = "secret";
/// The domain the SMTP server delivers locally.
pub const DOMAIN: &str = "example.test";

/// The running instance, if any test holds it.
static SHARED: Mutex<Weak<MailServer>> = Mutex::new(Weak::new());
/// True from the start of an instance until its processes have exited.
static RUNNING: Mutex<bool> = Mutex::new(false);
static NEXT_USER: AtomicU32 = AtomicU32::new(1);

/// dovecot + opensmtpd on 127.0.0.1.
pub struct MailServer {
    /// IMAP (plain, loopback only).
    pub imap_port: u16,
    /// SMTP (plain, loopback only; delivers `@example.test` into dovecot).
    pub smtp_port: u16,
    /// LMTP (dovecot's delivery port, behind smtpd).
    pub lmtp_port: u16,
    /// dovecot's SMTP submission service (plain, loopback only; PLAIN or XOAUTH2 login,
    /// relaying to smtpd).
    pub submission_port: u16,
    /// The bearer tokens dovecot accepts (its introspection stand-in).
    pub bearer: BearerTokens,
    dir: tempfile::TempDir,
    dovecot: Mutex<Option<Child>>,
    smtpd: Mutex<Option<Child>>,
}

impl MailServer {
    /// The process's servers, started if no test holds them now.
    pub fn shared() -> Arc<MailServer> {
        let mut shared = SHARED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(server) = shared.upgrade() {
            return server;
        }
        // A previous instance may still be stopping in another thread: smtpd must be gone.
        let deadline = Instant::now() + Duration::from_secs(15);
        while *RUNNING.lock().unwrap_or_else(|p| p.into_inner()) {
            assert!(
                Instant::now() < deadline,
                "previous mail servers did not stop"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let server = Arc::new(Self::start());
        *shared = Arc::downgrade(&server);
        server
    }

    fn start() -> Self {
        *RUNNING.lock().unwrap_or_else(|p| p.into_inner()) = true;
        // Short path: dovecot's unix sockets live under it.
        let dir = tempfile::Builder::new()
            .prefix("dv")
            .tempdir_in("/tmp")
            .unwrap();
        let d = dir.path().to_path_buf();
        set_mode(&d, 0o755);
        let mail = d.join("mail");
        std::fs::create_dir(&mail).unwrap();
        // nobody:nogroup (65534) owns the maildirs.
        std::os::unix::fs::chown(&mail, Some(65534), Some(65534)).unwrap();
        let (imap_port, lmtp_port, smtp_port) = (free_port(), free_port(), free_port());
        let submission_port = free_port();
        let bearer = BearerTokens::start();
        let d_str = d.display().to_string();
        std::fs::write(
            d.join("dovecot.conf"),
            DOVECOT_CONF
                .replace("$D", &d_str)
                .replace("$IMAP", &imap_port.to_string())
                .replace("$LMTP", &lmtp_port.to_string())
                .replace("$SUBMISSION", &submission_port.to_string())
                .replace("$SMTP", &smtp_port.to_string()),
        )
        .unwrap();
        std::fs::write(
            d.join("oauth2.conf"),
            OAUTH2_CONF.replace("$INTROSPECT", &bearer.introspection_url()),
        )
        .unwrap();
        set_mode(&d.join("oauth2.conf"), 0o644);
        std::fs::write(
            d.join("smtpd.conf"),
            SMTPD_CONF
                .replace("$SMTP", &smtp_port.to_string())
                .replace("$LMTP", &lmtp_port.to_string()),
        )
        .unwrap();
        let dovecot = Command::new(bin("dovecot"))
            .arg("-F")
            .arg("-c")
            .arg(d.join("dovecot.conf"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("dovecot.err")).unwrap())
            .spawn()
            .expect(
                "start dovecot (apt-get install dovecot-imapd dovecot-lmtpd dovecot-submissiond)",
            );
        let smtpd = Command::new(bin("smtpd"))
            .arg("-d")
            .arg("-f")
            .arg(d.join("smtpd.conf"))
            .stdout(std::fs::File::create(d.join("smtpd.log")).unwrap())
            .stderr(std::fs::File::create(d.join("smtpd.err")).unwrap())
            .spawn()
            .expect("start smtpd (apt-get install opensmtpd)");
        let server = Self {
            imap_port,
            smtp_port,
            lmtp_port,
            submission_port,
            bearer,
            dir,
            dovecot: Mutex::new(Some(dovecot)),
            smtpd: Mutex::new(Some(smtpd)),
        };
        for (name, port) in [
            ("imap", imap_port),
            ("lmtp", lmtp_port),
            ("smtp", smtp_port),
            ("submission", submission_port),
        ] {
            assert!(
                wait_for_port(port, Duration::from_secs(10)),
                "{name} did not listen on {port}; logs:\n{}",
                server.log()
            );
        }
        server
    }

    /// A fresh address on the local domain, with its own maildir.
    pub fn address(&self, tag: &str) -> String {
        let n = NEXT_USER.fetch_add(1, Ordering::SeqCst);
        format!("{tag}-{}-{n}@{DOMAIN}", std::process::id())
    }

    /// An IMAP session logged in as `user`.
    pub async fn imap(&self, user: &str) -> Session<TcpStream> {
        let tcp = TcpStream::connect(("127.0.0.1", self.imap_port))
            .await
            .unwrap();
        let mut client = async_imap::Client::new(tcp);
        client.read_response().await.unwrap().unwrap();
        client
            .login(user, PASSWORD)
            .await
            .map_err(|(e, _)| e)
            .unwrap()
    }

    /// Appends a raw mail to `folder` of `user` (as another session: the reader sees EXISTS).
    pub async fn append(&self, user: &str, folder: &str, raw: &[u8]) {
        let mut s = self.imap(user).await;
        s.append(folder, None, None, raw).await.unwrap();
        s.logout().await.unwrap();
    }

    /// Creates `folder` of `user`.
    pub async fn create_folder(&self, user: &str, folder: &str) {
        let mut s = self.imap(user).await;
        s.create(folder).await.unwrap();
        s.logout().await.unwrap();
    }

    /// Deletes `folder` of `user` (its mail goes with it; a folder created again under the
    /// same name gets a new UIDVALIDITY).
    pub async fn delete_folder(&self, user: &str, folder: &str) {
        let mut s = self.imap(user).await;
        s.delete(folder).await.unwrap();
        s.logout().await.unwrap();
    }

    /// The UIDVALIDITY of `folder` of `user`.
    pub async fn uidvalidity(&self, user: &str, folder: &str) -> u32 {
        let mut s = self.imap(user).await;
        let mailbox = s.examine(folder).await.unwrap();
        s.logout().await.unwrap();
        mailbox.uid_validity.unwrap()
    }

    /// Every mail in `folder` of `user` with its flags, fetched with `BODY.PEEK[]`.
    pub async fn mails(&self, user: &str, folder: &str) -> Vec<(Vec<u8>, Vec<String>)> {
        let mut s = self.imap(user).await;
        let mailbox = s.examine(folder).await.unwrap();
        let mut out = Vec::new();
        if mailbox.exists > 0 {
            let fetched: Vec<_> = s
                .fetch("1:*", "(FLAGS BODY.PEEK[])")
                .await
                .unwrap()
                .try_collect()
                .await
                .unwrap();
            for f in &fetched {
                let flags = f.flags().map(|fl| format!("{fl:?}")).collect();
                out.push((f.body().unwrap_or_default().to_vec(), flags));
            }
        }
        s.logout().await.unwrap();
        out
    }

    /// Waits until `folder` of `user` holds at least `count` mails; returns them.
    pub async fn wait_for_mails(
        &self,
        user: &str,
        folder: &str,
        count: usize,
        timeout: Duration,
    ) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        loop {
            let mails = self.mails(user, folder).await;
            if mails.len() >= count {
                return mails.into_iter().map(|(m, _)| m).collect();
            }
            assert!(
                Instant::now() < deadline,
                "{user}/{folder} has {} mails, wanted {count}; logs:\n{}",
                mails.len(),
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Drops every IMAP connection of `user` (`doveadm kick`), as a server restart or a network
    /// failure would.
    pub fn kick(&self, user: &str) {
        let status = Command::new(bin("doveadm"))
            .arg("-c")
            .arg(self.dir.path().join("dovecot.conf"))
            .args(["kick", user])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "doveadm kick {user}: {status}");
    }

    /// The servers' logs so far.
    pub fn log(&self) -> String {
        ["dovecot.log", "dovecot.err", "smtpd.log", "smtpd.err"]
            .iter()
            .map(|f| {
                format!(
                    "--- {f}\n{}",
                    std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for MailServer {
    fn drop(&mut self) {
        for child in [&self.smtpd, &self.dovecot] {
            if let Some(child) = child.lock().unwrap_or_else(|p| p.into_inner()).take() {
                stop_child(child, Duration::from_secs(5));
            }
        }
        self.bearer.stop();
        *RUNNING.lock().unwrap_or_else(|p| p.into_inner()) = false;
    }
}

fn bin(name: &str) -> PathBuf {
    ["/usr/sbin", "/usr/bin", "/usr/local/sbin"]
        .iter()
        .map(|d| PathBuf::from(d).join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The static passdb serves password logins (IMAP LOGIN counts as PLAIN) and the lookups
/// without a login (`none`: the static userdb asks it whether an LMTP recipient exists); the
/// oauth2 passdb only the bearer-token mechanisms, so password tests never reach the
/// introspection stand-in.
const DOVECOT_CONF: &str = "base_dir = $D/run
state_dir = $D/state
log_path = $D/dovecot.log
listen = 127.0.0.1
protocols = imap lmtp submission
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain xoauth2 oauthbearer
default_internal_user = nobody
default_internal_group = nogroup
default_login_user = nobody
mail_location = maildir:~/Maildir
hostname = mail.example.test
submission_relay_host = 127.0.0.1
submission_relay_port = $SMTP
passdb {
  driver = static
  mechanisms = plain login none
  args = password=secret
}
passdb {
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = $D/oauth2.conf
}
userdb {
  driver = static
  args = uid=nobody gid=nogroup home=$D/mail/%u
}
service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = $IMAP
  }
  inet_listener imaps {
    port = 0
  }
}
service lmtp {
  inet_listener lmtp {
    address = 127.0.0.1
    port = $LMTP
  }
}
service submission-login {
  inet_listener submission {
    address = 127.0.0.1
    port = $SUBMISSION
  }
}
";

/// dovecot's oauth2 passdb (2.3): every bearer token is POSTed (`token=…`) to the
/// introspection stand-in, which answers `{"active": true, "username": …}` for a live token;
/// the username must be the login's.
const OAUTH2_CONF: &str = "introspection_mode = post
introspection_url = $INTROSPECT
force_introspection = yes
username_attribute = username
active_attribute = active
active_value = true
timeout_msecs = 10000
";

const SMTPD_CONF: &str = "table vmap { \"@example.test\" = \"nobody\" }
listen on 127.0.0.1 port $SMTP
action \"to_dovecot\" lmtp \"127.0.0.1:$LMTP\" rcpt-to virtual <vmap>
match from local for domain \"example.test\" action \"to_dovecot\"
";
