//! The dashboard in a real headless Chromium, driven through chromedriver's
//! WebDriver HTTP API against the real server: enter a token, see a plan,
//! start a run, watch steps appear live, approve, see it succeed.
//! Chromium and chromedriver come from `scripts/install-deps.sh`; without
//! them this test fails and says so.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{start, SHOP, SHOP_ID};
use serde_json::{json, Value};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn find_binary(names: &[&str]) -> Option<String> {
    names.iter().find_map(|name| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|p| p.is_file())
                .map(|p| p.display().to_string())
        })
    })
}

/// A chromedriver process and one headless Chromium session.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    agent: ureq::Agent,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self
            .agent
            .delete(&format!("{}/session/{}", self.base, self.session))
            .call();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Browser {
    fn launch() -> Self {
        let chromium = find_binary(&["chromium", "chromium-browser"]).expect(
            "chromium is not installed: run scripts/install-deps.sh (apt-get install chromium chromium-driver)",
        );
        let chromedriver = find_binary(&["chromedriver"]).expect(
            "chromedriver is not installed: run scripts/install-deps.sh (apt-get install chromium-driver)",
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let base = format!("http://127.0.0.1:{port}");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut r) = agent.get(&format!("{base}/status")).call() {
                let v: Value = r.body_mut().read_json().unwrap();
                if v["value"]["ready"] == true {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not become ready"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut browser = Self {
            driver,
            base,
            session: String::new(),
            agent,
        };
        let created = browser.send(
            "POST",
            "/session",
            json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": chromium,
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000"]
                }
            }}}),
        );
        browser.session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {created}"))
            .to_owned();
        browser
    }

    fn send(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.base);
        let mut response = match method {
            "GET" => self.agent.get(&url).call(),
            _ => self.agent.post(&url).send_json(body),
        }
        .unwrap();
        let v: Value = response.body_mut().read_json().unwrap();
        v["value"].clone()
    }

    fn session(&self, method: &str, path: &str, body: Value) -> Value {
        self.send(method, &format!("/session/{}{path}", self.session), body)
    }

    fn goto(&self, url: &str) {
        self.session("POST", "/url", json!({"url": url}));
    }

    /// Waits for an element matching `css`; returns its id.
    fn wait_for(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let found = self.session(
                "POST",
                "/element",
                json!({"using": "css selector", "value": css}),
            );
            if let Some(id) = found[ELEMENT].as_str() {
                return id.to_owned();
            }
            if Instant::now() > deadline {
                let page = self.script("return document.body.innerText");
                panic!("no element `{css}` after 30 s ({found}); the page shows:\n{page}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn click(&self, css: &str) {
        let id = self.wait_for(css);
        self.session("POST", &format!("/element/{id}/click"), json!({}));
    }

    fn type_into(&self, css: &str, text: &str) {
        let id = self.wait_for(css);
        self.session(
            "POST",
            &format!("/element/{id}/value"),
            json!({"text": text}),
        );
    }

    fn text(&self, css: &str) -> String {
        let id = self.wait_for(css);
        self.session("GET", &format!("/element/{id}/text"), Value::Null)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    fn script(&self, script: &str) -> Value {
        self.session(
            "POST",
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
    }

    /// Waits until `css`'s text is `expected`.
    fn wait_text(&self, css: &str, expected: &str) {
        self.wait_until(css, expected, |text| text == expected);
    }

    /// Waits until `css`'s text contains `needle`; returns the text.
    fn wait_contains(&self, css: &str, needle: &str) -> String {
        self.wait_until(css, needle, |text| text.contains(needle))
    }

    fn wait_until(&self, css: &str, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = self.text(css);
            if done(&text) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "`{css}` shows {text:?}, not {what:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn an_operator_starts_watches_and_approves_a_run_in_the_dashboard() {
    let s = start(40);
    assert_eq!(s.put_plan(SHOP_ID, &s.admin, SHOP, None).status, 201);
    let browser = Browser::launch();
    browser.goto(&format!("{}/", s.base));

    // Without a token the dashboard asks for one.
    browser.wait_text(
        "#banner",
        "Enter an API token (the admin token is in <home>/admin-token).",
    );
    browser.type_into("#token-input", &s.admin);
    browser.click("#token-save");

    // The plan is listed, unverified.
    let row = format!("#plans tr[data-plan=\"{SHOP_ID}\"]");
    browser.wait_for(&row);
    assert_eq!(browser.text(&format!("{row} .badge")), "unverified");
    assert_eq!(browser.text("#node-role"), "primary");

    // Start a failover: steps appear live, then the approval waits.
    browser.script(&format!(
        "const s = document.querySelector('#mode-{SHOP_ID}'); \
         s.value = 'failover'; s.dispatchEvent(new Event('change'))"
    ));
    browser.click(&format!("button[data-start=\"{SHOP_ID}\"]"));
    browser.wait_for("#timeline li[data-state=\"succeeded\"]");
    browser.click("#timeline li[data-state=\"awaiting-approval\"] button.approve");
    browser.wait_text("#exec-status", "succeeded");
    // The status may arrive before the journal's last events do.
    let journal = browser.wait_contains("#journal", "execution-finished");
    assert!(journal.contains("approval-granted"), "{journal}");
    let states = browser.script(
        "return Array.from(document.querySelectorAll('#timeline li')).map(li => li.dataset.state)",
    );
    let states = states.as_array().unwrap();
    assert!(states.len() > 5);
    assert!(states.iter().all(|s| s == "succeeded"), "{states:?}");

    // The server agrees, and the approval is audited.
    let executions = s.get("/executions", &s.admin).json();
    assert_eq!(executions[0]["status"], "succeeded");
    let audit = s.get("/audit", &s.admin).text;
    assert!(audit.contains("execution.approve"), "{audit}");

    // A second failover, cancelled at its approval: the cleanup-only end.
    browser.click(&format!("button[data-start=\"{SHOP_ID}\"]"));
    browser.wait_for("#timeline li[data-state=\"awaiting-approval\"] button.approve");
    browser.click("#exec-cancel");
    browser.wait_text("#exec-status", "cancelled");
    browser.wait_contains("#journal", "cancel-requested");
    let executions = s.get("/executions", &s.admin).json();
    assert_eq!(executions[0]["status"], "cancelled");
    assert_eq!(executions[1]["status"], "succeeded");
}

#[test]
fn the_dashboard_of_a_follower_moves_to_the_primary_with_the_token() {
    let primary = start(40);
    assert_eq!(
        primary.put_plan(SHOP_ID, &primary.admin, SHOP, None).status,
        201
    );
    let follower = start(40);
    follower.log.role.send_replace(haven_store::Role::Follower {
        primary: Some(primary.base.clone()),
    });
    let browser = Browser::launch();
    browser.goto(&format!("{}/#token={}", follower.base, primary.admin));
    // The plan only exists on the primary: seeing it proves the move.
    browser.wait_for(&format!("#plans tr[data-plan=\"{SHOP_ID}\"]"));
    let url = browser.session("GET", "/url", Value::Null);
    assert_eq!(
        url.as_str(),
        Some(format!("{}/", primary.base).as_str()),
        "the token left the URL"
    );
    assert_eq!(browser.text("#node-role"), "primary");
}
