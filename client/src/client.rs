//! `Client`, the async HTTP client of the secrets API (reqwest), used by the CLI and secretfs.

use std::path::Path;
use std::time::Duration;

use reqwest::Method;
use secrets_core::api::{
    CreateUser, Grant, JobCreated, JobSpec, PutSecret, ResolveRequest, ResolveResponse, SecretInfo,
    SecretValue, SecretVersion, SharedGrant, TokenInfo, TokenIssued, UserRemoved, WatchResponse,
    WhoAmI,
};
use secrets_core::{JobId, SecretBytes, SecretKey, Token, UserName};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::conn::ClientConfig;
use crate::error::{ClientError, answer, not_http, tls_failure};

/// A connection pool to one service, authenticated with one token.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<Token>,
}

fn read_ca(path: &Path) -> Result<Vec<reqwest::Certificate>, ClientError> {
    let err = |detail: String| ClientError::CaFile {
        path: path.to_owned(),
        detail,
    };
    let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate in it".into()));
    }
    Ok(certs)
}

impl Client {
    pub fn new(cfg: &ClientConfig) -> Result<Self, ClientError> {
        let base = cfg.url.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://"))
            || reqwest::Url::parse(&base).is_err()
        {
            return Err(ClientError::BadUrl(cfg.url.clone()));
        }
        let mut b = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(cfg.timeout)
            .no_proxy()
            .user_agent(concat!("neuro-secrets/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &cfg.ca_file {
            for c in read_ca(path)? {
                b = b.add_root_certificate(c);
            }
        }
        let http = b.build().map_err(|e| ClientError::Protocol {
            url: base.clone(),
            detail: e.to_string(),
        })?;
        Ok(Self {
            http,
            base,
            token: cfg.token.clone(),
        })
    }

    /// A failed request: a TLS failure or the wrong protocol fails fast, anything else may
    /// pass.
    fn send_error(&self, e: &reqwest::Error) -> ClientError {
        let url = self.base.clone();
        match incompatible(e) {
            Some(detail) => ClientError::Incompatible { url, detail },
            None => ClientError::Unavailable {
                url,
                detail: describe(e),
            },
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let url = format!("{}/api/v1{path}", self.base);
        let mut req = self.http.request(method, &url);
        if !query.is_empty() {
            req = req.query(query);
        }
        if let Some(t) = &self.token {
            req = req.bearer_auth(t.expose());
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| self.send_error(&e))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| ClientError::Unavailable {
            url: self.base.clone(),
            detail: describe(&e),
        })?;
        answer(&url, status.as_u16(), &bytes)
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call::<(), T>(Method::GET, path, &[], None).await
    }

    pub async fn ping(&self) -> Result<String, ClientError> {
        self.get("/ping").await
    }

    pub async fn whoami(&self) -> Result<WhoAmI, ClientError> {
        self.get("/whoami").await
    }

    pub async fn put_secret(
        &self,
        owner: Option<&UserName>,
        key: &SecretKey,
        value: SecretBytes,
    ) -> Result<SecretVersion, ClientError> {
        let body = PutSecret {
            key: key.clone(),
            value,
            owner: owner.cloned(),
        };
        self.call(Method::POST, "/secrets", &[], Some(&body)).await
    }

    pub async fn list_secrets(&self) -> Result<Vec<SecretInfo>, ClientError> {
        self.get("/secrets").await
    }

    pub async fn get_secret(
        &self,
        owner: &UserName,
        key: &SecretKey,
    ) -> Result<SecretValue, ClientError> {
        self.get(&format!("/secrets/{owner}/{key}")).await
    }

    pub async fn delete_secret(
        &self,
        owner: &UserName,
        key: &SecretKey,
    ) -> Result<(), ClientError> {
        self.call::<(), ()>(
            Method::DELETE,
            &format!("/secrets/{owner}/{key}"),
            &[],
            None,
        )
        .await
    }

    pub async fn resolve(&self, uris: Vec<String>) -> Result<ResolveResponse, ClientError> {
        self.call(
            Method::POST,
            "/secrets/resolve",
            &[],
            Some(&ResolveRequest { uris }),
        )
        .await
    }

    /// Long-polls for changes after `since`, waiting up to `wait_s` seconds for one.
    pub async fn watch(
        &self,
        since: Option<u64>,
        wait_s: u64,
    ) -> Result<WatchResponse, ClientError> {
        let since = since.map(|s| s.to_string());
        let wait = wait_s.to_string();
        let mut q = vec![("timeout_s", wait.as_str())];
        if let Some(s) = &since {
            q.push(("since", s.as_str()));
        }
        self.call::<(), _>(Method::GET, "/secrets/watch", &q, None)
            .await
    }

    pub async fn grant(
        &self,
        user: &UserName,
        grants: &[Grant],
    ) -> Result<Vec<Grant>, ClientError> {
        self.call(
            Method::POST,
            &format!("/users/{user}/permissions"),
            &[],
            Some(&grants),
        )
        .await
    }

    pub async fn permissions(&self, user: &UserName) -> Result<Vec<Grant>, ClientError> {
        self.get(&format!("/users/{user}/permissions")).await
    }

    pub async fn shared(&self, user: &UserName) -> Result<Vec<SharedGrant>, ClientError> {
        self.get(&format!("/users/{user}/permissions/shared")).await
    }

    pub async fn revoke(&self, user: &UserName, uri: &str) -> Result<(), ClientError> {
        self.call::<(), ()>(
            Method::DELETE,
            &format!("/users/{user}/permissions"),
            &[("uri", uri)],
            None,
        )
        .await
    }

    pub async fn create_job(&self, spec: &JobSpec) -> Result<JobCreated, ClientError> {
        self.call(Method::POST, "/jobs", &[], Some(spec)).await
    }

    pub async fn delete_job(&self, job_id: &JobId) -> Result<(), ClientError> {
        self.call::<(), ()>(Method::DELETE, &format!("/jobs/{job_id}"), &[], None)
            .await
    }

    pub async fn admin_create_user(&self, name: &UserName) -> Result<TokenIssued, ClientError> {
        let body = CreateUser { name: name.clone() };
        self.call(Method::POST, "/admin/users", &[], Some(&body))
            .await
    }

    pub async fn admin_issue_token(&self, user: &UserName) -> Result<TokenIssued, ClientError> {
        self.call::<(), _>(
            Method::POST,
            &format!("/admin/users/{user}/tokens"),
            &[],
            None,
        )
        .await
    }

    pub async fn admin_list_tokens(&self, user: &UserName) -> Result<Vec<TokenInfo>, ClientError> {
        self.get(&format!("/admin/users/{user}/tokens")).await
    }

    /// Removes a user: revokes its tokens (job tokens included), deletes its jobs and the
    /// grants it holds, and keeps or deletes its secrets.
    pub async fn admin_remove_user(
        &self,
        user: &UserName,
        delete_secrets: bool,
    ) -> Result<UserRemoved, ClientError> {
        let secrets = if delete_secrets { "delete" } else { "keep" };
        self.call::<(), _>(
            Method::DELETE,
            &format!("/admin/users/{user}"),
            &[("secrets", secrets)],
            None,
        )
        .await
    }

    pub async fn admin_revoke_token(&self, token_id: &str) -> Result<(), ClientError> {
        self.call::<(), ()>(
            Method::DELETE,
            &format!("/admin/tokens/{token_id}"),
            &[],
            None,
        )
        .await
    }
}

/// Why a failed request cannot succeed by trying again, when that is so: a TLS failure (with
/// a hint for the common mistakes) or a service that speaks another protocol than the URL
/// says. A handshake cut short by the network (an I/O error) is not one of them.
fn incompatible(e: &reqwest::Error) -> Option<String> {
    use std::error::Error as _;
    let mut cause = e.source();
    while let Some(c) = cause {
        if let Some(t) = c.downcast_ref::<rustls::Error>() {
            return tls_failure(t);
        }
        // An answer that is not HTTP, e.g. a TLS service behind an http:// URL.
        if let Some(h) = c.downcast_ref::<hyper::Error>()
            && h.is_parse()
        {
            return Some(not_http(h));
        }
        // rustls's error reaches us inside (nested) `io::Error`s, whose `source()` skips the
        // error they wrap: step into it instead.
        cause = match c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => c.source(),
        };
    }
    None
}

/// A short cause for a transport error, without the URL's query (which never holds a secret,
/// but keep messages short) and without the request body.
fn describe(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut cause = e.source();
    let mut last = None;
    while let Some(c) = cause {
        last = Some(c.to_string());
        cause = c.source();
    }
    if e.is_timeout() {
        return "timed out".into();
    }
    last.unwrap_or_else(|| e.to_string())
}
