//! A real browser for tests: Debian's headless Chromium, driven by the
//! node scenarios in `tests/browser/` (Playwright, pointed at the system
//! browser; it downloads nothing), and a tiny page server for the pages a
//! scenario starts from.
//!
//! A test calls [`Browser::find`]. When node, Chromium or
//! `tests/browser/node_modules` is missing it prints a loud `SKIPPED:` line
//! saying how to enable the test and returns None, so the test ends without
//! having checked anything; with `CONNECTIONS_TEST_BROWSER=1` (set by
//! `.ci/run`) a missing browser fails the test instead. Enable it with:
//!
//! ```text
//! apt-get install chromium nodejs npm
//! npm ci --prefix tests/browser
//! ```
//!
//! `CONNECTIONS_CHROMIUM` names another Chromium binary (default
//! `/usr/bin/chromium`, else `chromium` on the PATH).

use std::{
    collections::HashMap,
    convert::Infallible,
    io::{Read, Write},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use http_body_util::Full;
use hyper::{Request, Response, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::{net::TcpListener, task::JoinHandle};

/// Set to `1` to make a missing browser a test failure.
pub const REQUIRE_VAR: &str = "CONNECTIONS_TEST_BROWSER";
/// Another Chromium binary than Debian's.
pub const CHROMIUM_VAR: &str = "CONNECTIONS_CHROMIUM";

/// How long one scenario may run, browser start included.
const SCENARIO_DEADLINE: Duration = Duration::from_secs(90);

/// Everything a scenario needs: node, Chromium and the harness directory
/// with its installed `node_modules`.
#[derive(Debug, Clone)]
pub struct Browser {
    node: PathBuf,
    chromium: PathBuf,
    dir: PathBuf,
}

impl Browser {
    /// The harness, or None after a loud `SKIPPED` line when a part is
    /// missing (a panic when `CONNECTIONS_TEST_BROWSER=1`). `test` names the
    /// calling test in that line.
    pub fn find(test: &str) -> Option<Self> {
        match Self::locate() {
            Ok(browser) => Some(browser),
            Err(missing) => {
                let how = "to enable it: `apt-get install chromium nodejs npm` and \
                           `npm ci --prefix tests/browser` (or set CONNECTIONS_CHROMIUM)";
                if std::env::var(REQUIRE_VAR).is_ok_and(|v| v == "1") {
                    panic!("browser test {test} cannot run: {missing}; {how}");
                }
                // Straight to stderr: the test harness captures `eprintln!`
                // of passing tests, and this line must be seen.
                let _ = writeln!(
                    std::io::stderr(),
                    "\n!!!!!!!!!!\nSKIPPED: browser test {test}: {missing}; {how}. \
                     Set {REQUIRE_VAR}=1 to make this a failure.\n!!!!!!!!!!"
                );
                None
            }
        }
    }

    fn locate() -> Result<Self, String> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
        if !dir.join("node_modules/playwright-core").is_dir() {
            return Err(format!("{}/node_modules is not installed", dir.display()));
        }
        let node = on_path("node").ok_or("node is not on the PATH")?;
        let chromium = match std::env::var_os(CHROMIUM_VAR) {
            Some(path) => PathBuf::from(path),
            None => Some(PathBuf::from("/usr/bin/chromium"))
                .filter(|p| p.is_file())
                .or_else(|| on_path("chromium"))
                .ok_or("no Chromium at /usr/bin/chromium or on the PATH")?,
        };
        if !chromium.is_file() {
            return Err(format!("{} does not exist", chromium.display()));
        }
        Ok(Self {
            node,
            chromium,
            dir,
        })
    }

    /// Runs `tests/browser/<script>` with `input` (a JSON object, the
    /// script's first argument) and returns the JSON object it reported.
    /// Panics, with the script's output, when it fails or overruns.
    pub async fn run(&self, script: &str, input: &Value) -> Value {
        let browser = self.clone();
        let script = script.to_owned();
        let input = input.to_string();
        tokio::task::spawn_blocking(move || browser.run_blocking(&script, &input))
            .await
            .expect("browser scenario thread")
    }

    fn run_blocking(&self, script: &str, input: &str) -> Value {
        let mut child = Command::new(&self.node)
            .arg(self.dir.join(script))
            .arg(input)
            .current_dir(&self.dir)
            .env(CHROMIUM_VAR, &self.chromium)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start node {}: {e}", self.node.display()));
        let drain = |mut pipe: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut text = String::new();
                let _ = pipe.read_to_string(&mut text);
                text
            })
        };
        let stdout = drain(Box::new(child.stdout.take().expect("stdout")));
        let stderr = drain(Box::new(child.stderr.take().expect("stderr")));
        let deadline = Instant::now() + SCENARIO_DEADLINE;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for node") {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let stdout = stdout.join().unwrap_or_default();
        let stderr = stderr.join().unwrap_or_default();
        let Some(status) = status else {
            panic!(
                "browser scenario {script} ran longer than {SCENARIO_DEADLINE:?}\n\
                 stdout: {stdout}\nstderr: {stderr}"
            );
        };
        let reported = stdout
            .lines()
            .rev()
            .find_map(|line| serde_json::from_str::<Value>(line).ok());
        match reported {
            Some(result) if status.success() && result["ok"] == true => result,
            _ => panic!(
                "browser scenario {script} failed ({status})\nstdout: {stdout}\nstderr: {stderr}"
            ),
        }
    }
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

/// A page server on a random loopback port serving fixed pages by path
/// (`text/html`, whatever the query string), 404 otherwise; stops when
/// dropped. Pages can be added after it started, e.g. a page holding a link
/// back to the server's own address.
pub struct PageServer {
    pub addr: SocketAddr,
    pages: Arc<Mutex<HashMap<String, String>>>,
    task: JoinHandle<()>,
}

impl PageServer {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let pages: Arc<Mutex<HashMap<String, String>>> = Arc::default();
        let served = pages.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let pages = served.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                        let page = pages
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get(request.uri().path())
                            .cloned();
                        async move {
                            let response = match page {
                                Some(html) => Response::builder()
                                    .header("content-type", "text/html; charset=utf-8")
                                    .body(Full::new(Bytes::from(html))),
                                None => Response::builder()
                                    .status(404)
                                    .body(Full::new(Bytes::from_static(b"not found"))),
                            };
                            Ok::<_, Infallible>(response.expect("response"))
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, pages, task }
    }

    /// Serves `html` at `path` from now on.
    pub fn page(&self, path: &str, html: impl Into<String>) {
        self.pages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(path.to_owned(), html.into());
    }

    /// `http://127.0.0.1:<port>`.
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.origin())
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The harness's own check: Chromium loads a page served by the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_smoke_chromium_loads_a_page_served_by_the_test() {
    let Some(browser) = Browser::find("browser_smoke_chromium_loads_a_page_served_by_the_test")
    else {
        return;
    };
    let server = PageServer::start().await;
    server.page(
        "/hello",
        "<!doctype html><title>Harness</title><p id=message>hello from the test</p>",
    );
    let result = browser
        .run(
            "smoke.js",
            &serde_json::json!({ "url": server.url("/hello") }),
        )
        .await;
    assert_eq!(result["title"], "Harness");
    assert_eq!(result["message"], "hello from the test");
}
