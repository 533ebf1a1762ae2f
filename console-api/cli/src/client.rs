//! The console's HTTP API as the CLI uses it: bearer tokens refreshed once on `401`,
//! RFC 9457 problems turned into messages a person can act on.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::credentials::{self, Credentials};

/// An answer the console refused, with what it said.
#[derive(Debug)]
pub struct Refused {
    pub status: StatusCode,
    pub code: Option<String>,
    pub detail: String,
    /// `field: message` lines.
    pub fields: Vec<String>,
    pub request_id: Option<String>,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the console refused ({}", self.status.as_u16())?;
        if let Some(code) = &self.code {
            write!(f, " {code}")?;
        }
        write!(f, "): {}", self.detail)?;
        for field in &self.fields {
            write!(f, "\n  - {field}")?;
        }
        if let Some(id) = &self.request_id {
            write!(f, "\n  (request id {id})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Refused {}

impl Refused {
    fn from_body(status: StatusCode, body: &str) -> Self {
        let problem: Option<Value> = serde_json::from_str(body).ok();
        let text = |key: &str| {
            problem
                .as_ref()
                .and_then(|p| p.get(key))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let fields = problem
            .as_ref()
            .and_then(|p| p.get("errors"))
            .and_then(Value::as_array)
            .map(|errors| {
                errors
                    .iter()
                    .map(|e| {
                        format!(
                            "{}: {}",
                            e.get("field").and_then(Value::as_str).unwrap_or("?"),
                            e.get("message").and_then(Value::as_str).unwrap_or("?")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let detail = text("detail")
            .filter(|d| !d.is_empty())
            .or_else(|| text("title"))
            .unwrap_or_else(|| {
                let body = body.trim();
                if body.is_empty() {
                    status.canonical_reason().unwrap_or("error").to_string()
                } else {
                    body.chars().take(300).collect()
                }
            });
        Self {
            status,
            code: text("code"),
            detail,
            fields,
            request_id: text("request_id"),
        }
    }
}

/// A session with one console.
pub struct Console {
    http: reqwest::Client,
    base: String,
    creds: Option<Credentials>,
    creds_path: PathBuf,
}

impl Console {
    /// `url` overrides the logged-in console's URL (needed before the first login).
    pub fn new(url: Option<String>, creds_path: PathBuf) -> Result<Self> {
        let creds = credentials::load(&creds_path)?;
        let base = match (url, &creds) {
            (Some(url), _) => url,
            (None, Some(c)) => c.console.clone(),
            (None, None) => bail!(
                "which console? pass --console URL (or set TRELLIS_CONSOLE_URL), e.g. \
                 --console http://127.0.0.1:8080"
            ),
        };
        let base = base.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!("--console must be an http:// or https:// URL, not {base:?}");
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("trellis-cli/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            base,
            creds,
            creds_path,
        })
    }

    /// The same session with another request timeout (tests wait less than 30 s).
    #[cfg(test)]
    pub fn with_timeout(mut self, timeout: Duration) -> Result<Self> {
        self.http = reqwest::Client::builder().timeout(timeout).build()?;
        Ok(self)
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Stores tokens from a login or sign-up answer.
    pub fn remember(&mut self, email: &str, tokens: &Value) -> Result<()> {
        let field = |k: &str| {
            tokens
                .get(k)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| anyhow!("the console's answer has no {k}"))
        };
        let creds = Credentials {
            console: self.base.clone(),
            email: email.to_string(),
            access_token: field("access_token")?,
            refresh_token: field("refresh_token")?,
        };
        credentials::save(&self.creds_path, &creds)?;
        self.creds = Some(creds);
        Ok(())
    }

    /// Revokes the refresh token family and forgets the tokens.
    pub async fn logout(&mut self) -> Result<()> {
        if let Some(creds) = self.creds.take() {
            // Best effort: an unreachable console must not keep the tokens on disk.
            let _ = self
                .send(
                    Method::POST,
                    "/v1/auth/logout",
                    Some(&json!({"refresh_token": creds.refresh_token})),
                    None,
                    false,
                )
                .await;
        }
        credentials::remove(&self.creds_path)
    }

    /// An unauthenticated call (sign-up, login).
    pub async fn public(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value> {
        self.send(method, path, body, None, false).await
    }

    /// An authenticated call; refreshes the access token once if it expired.
    pub async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
    ) -> Result<Value> {
        if self.creds.is_none() {
            bail!("not logged in: run `trellis login --console URL --email you@example.com`");
        }
        match self
            .send(method.clone(), path, body, idempotency_key, true)
            .await
        {
            Err(e) if is_unauthorized(&e) => {
                self.refresh().await?;
                self.send(method, path, body, idempotency_key, true).await
            }
            other => other,
        }
    }

    /// An authenticated call answered with text (e.g. CSV), not JSON.
    pub async fn call_text(&mut self, path: &str) -> Result<String> {
        if self.creds.is_none() {
            bail!("not logged in: run `trellis login --console URL --email you@example.com`");
        }
        let get = |token: String| {
            self.http
                .get(format!("{}{path}", self.base))
                .bearer_auth(token)
                .send()
        };
        let token = self
            .creds
            .as_ref()
            .map(|c| c.access_token.clone())
            .unwrap_or_default();
        let mut response = get(token)
            .await
            .map_err(|e| anyhow!("cannot reach the console at {}: {e}", self.base))?;
        if response.status() == StatusCode::UNAUTHORIZED {
            self.refresh().await?;
            let token = self
                .creds
                .as_ref()
                .map(|c| c.access_token.clone())
                .unwrap_or_default();
            response = self
                .http
                .get(format!("{}{path}", self.base))
                .bearer_auth(token)
                .send()
                .await
                .map_err(|e| anyhow!("cannot reach the console at {}: {e}", self.base))?;
        }
        let status = response.status();
        let text = response.text().await?;
        if status.is_success() {
            Ok(text)
        } else {
            Err(Refused::from_body(status, &text).into())
        }
    }

    async fn refresh(&mut self) -> Result<()> {
        let Some(creds) = self.creds.clone() else {
            bail!("not logged in");
        };
        let tokens = self
            .send(
                Method::POST,
                "/v1/auth/refresh",
                Some(&json!({"refresh_token": creds.refresh_token})),
                None,
                false,
            )
            .await
            .map_err(|e| anyhow!("your session has ended ({e}); run `trellis login` again"))?;
        self.remember(&creds.email, &tokens)
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
        authenticated: bool,
    ) -> Result<Value> {
        let token = self
            .creds
            .as_ref()
            .filter(|_| authenticated)
            .map(|c| c.access_token.as_str());
        request(
            &self.http,
            &self.base,
            token,
            method,
            path,
            body,
            idempotency_key,
        )
        .await
    }

    /// A handle that sends authenticated requests on its own, with the access token as
    /// it is now (for requests in flight together, e.g. `trellis tx load`); after a `401`
    /// call [`Console::renew`] and take a new one.
    pub fn sender(&self) -> Result<Sender> {
        let Some(creds) = &self.creds else {
            bail!("not logged in: run `trellis login --console URL --email you@example.com`");
        };
        Ok(Sender {
            http: self.http.clone(),
            base: self.base.clone(),
            token: creds.access_token.clone(),
        })
    }

    /// Refreshes the access token if `sender`'s is still the current one (so that many
    /// requests refused together with one expired token refresh it once).
    pub async fn renew(&mut self, sender: &Sender) -> Result<()> {
        let current = self.creds.as_ref().map(|c| c.access_token.as_str());
        if current == Some(sender.token.as_str()) {
            self.refresh().await?;
        }
        Ok(())
    }
}

/// Sends authenticated requests with one access token; cheap to clone (the HTTP client's
/// connection pool is shared).
#[derive(Clone)]
pub struct Sender {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Sender {
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value> {
        request(
            &self.http,
            &self.base,
            Some(&self.token),
            Method::POST,
            path,
            Some(body),
            None,
        )
        .await
    }
}

/// The console could not be reached, or did not answer in time.
#[derive(Debug)]
pub struct Unreachable {
    base: String,
    error: reqwest::Error,
}

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cannot reach the console at {}: {}",
            self.base, self.error
        )
    }
}

impl std::error::Error for Unreachable {}

/// Whether `e` is a request that got no answer within the client's timeout.
pub fn is_timeout(e: &anyhow::Error) -> bool {
    e.downcast_ref::<Unreachable>()
        .map(|u| &u.error)
        .or_else(|| e.downcast_ref::<reqwest::Error>())
        .is_some_and(reqwest::Error::is_timeout)
}

/// One request; an answer outside 2xx becomes [`Refused`], an empty body `null`.
async fn request(
    http: &reqwest::Client,
    base: &str,
    token: Option<&str>,
    method: Method,
    path: &str,
    body: Option<&Value>,
    idempotency_key: Option<&str>,
) -> Result<Value> {
    let url = format!("{base}{path}");
    let mut request = http.request(method, &url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(key) = idempotency_key {
        request = request.header("idempotency-key", key);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.map_err(|error| Unreachable {
        base: base.to_string(),
        error,
    })?;
    let status = response.status();
    let text = response.text().await?;
    if !status.is_success() {
        return Err(Refused::from_body(status, &text).into());
    }
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&text)
        .map_err(|e| anyhow!("the console answered {url} with something that is not JSON: {e}"))
}

/// Whether `e` is the console's `503 table_handoff`: the account's table is moving to
/// another shard and the read may be repeated shortly.
pub fn is_table_handoff(e: &anyhow::Error) -> bool {
    e.downcast_ref::<Refused>().is_some_and(|r| {
        r.status == StatusCode::SERVICE_UNAVAILABLE && r.code.as_deref() == Some("table_handoff")
    })
}

pub fn is_unauthorized(e: &anyhow::Error) -> bool {
    e.downcast_ref::<Refused>()
        .is_some_and(|r| r.status == StatusCode::UNAUTHORIZED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_become_actionable_messages() {
        let body = r#"{"type":"urn:trellis:problem:validation","title":"Invalid request",
            "status":422,"detail":"the request has invalid fields","code":"validation",
            "request_id":"r-1","errors":[{"field":"shards.count","message":"must be 1..=256"}]}"#;
        let refused = Refused::from_body(StatusCode::UNPROCESSABLE_ENTITY, body);
        let text = refused.to_string();
        assert!(text.contains("422 validation"), "{text}");
        assert!(text.contains("shards.count: must be 1..=256"), "{text}");
        assert!(text.contains("request id r-1"), "{text}");
        let plain = Refused::from_body(StatusCode::BAD_GATEWAY, "");
        assert!(plain.to_string().contains("Bad Gateway"), "{plain}");
    }

    #[test]
    fn only_a_table_handoff_is_a_handoff() {
        let handoff = r#"{"status":503,"code":"table_handoff","detail":"table 86 is being handed off to shard 2; retry shortly"}"#;
        let refused = Refused::from_body(StatusCode::SERVICE_UNAVAILABLE, handoff);
        assert!(is_table_handoff(&anyhow::Error::from(refused)));
        let other = r#"{"status":503,"code":"node_unavailable","detail":"no node answered"}"#;
        let refused = Refused::from_body(StatusCode::SERVICE_UNAVAILABLE, other);
        assert!(!is_table_handoff(&anyhow::Error::from(refused)));
        let wrong_status = Refused::from_body(StatusCode::CONFLICT, handoff);
        assert!(!is_table_handoff(&anyhow::Error::from(wrong_status)));
    }

    #[test]
    fn a_console_url_is_required_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        let err = Console::new(None, path.clone()).err().unwrap().to_string();
        assert!(err.contains("--console"), "{err}");
        let err = Console::new(Some("ftp://x".into()), path)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("http://"), "{err}");
    }
}
