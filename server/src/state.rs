//! What the HTTP side shares: the domain, and the limits that concern connections and
//! requests rather than secrets.

use std::sync::Arc;

use crate::client_addr::Cidr;
use crate::domain::Domain;
use crate::limits::{AnswerBudget, InFlight, LoginLimiter};

/// The state every route and layer gets.
#[derive(Debug)]
pub struct App {
    pub domain: Domain,
    /// Requests in flight per token, per user and without a token (`admit`).
    pub inflight: InFlight,
    /// Bytes of answers waiting to be sent (`limits::ANSWER_BUDGET`).
    pub answers: AnswerBudget,
    /// Failed console log-ins per client address and target user.
    pub logins: LoginLimiter,
    /// Whether the API's listener serves TLS (the console's cookie is `__Host-` then).
    pub tls: bool,
    /// Proxies whose X-Forwarded-For names the client (`--trusted-proxy`).
    pub trusted_proxies: Vec<Cidr>,
}

impl App {
    /// The HTTP side of `domain`, with the default limits (`secretd` sizes them from its
    /// connection cap).
    pub fn new(domain: Domain) -> Self {
        Self {
            domain,
            inflight: InFlight::default(),
            answers: AnswerBudget::default(),
            logins: LoginLimiter::default(),
            tls: false,
            trusted_proxies: Vec::new(),
        }
    }
}

pub type AppState = Arc<App>;
