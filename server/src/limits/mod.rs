//! The service's limits on what clients may hold: requests in flight (`inflight`), memory
//! for answers being sent (`answers`), failed console log-ins (`logins`); and `hold`, which
//! keeps a place or a share until the answer has been sent.

mod answers;
mod inflight;
mod logins;

pub use answers::{ANSWER_BUDGET, ANSWER_SHARE, AnswerBudget, AnswerShare};
pub use inflight::{Admitted, InFlight, PER_TOKEN, PER_USER};
pub use logins::{FAILURE_WINDOW, LoginLimiter, MAX_FAILURES, MAX_USER_FAILURES, MAX_WINDOWS};

use axum::response::Response;

/// `resp` with `guard` kept alive until its body has been sent or dropped.
pub fn hold<G: Send + 'static>(resp: Response, guard: G) -> Response {
    let (parts, body) = resp.into_parts();
    Response::from_parts(
        parts,
        axum::body::Body::new(Held {
            inner: body,
            rest: axum::body::Bytes::new(),
            _guard: guard,
        }),
    )
}

/// A response body that holds something (a place in flight, a share of the answer budget)
/// for as long as it lives. It hands hyper its data in pieces of at most `PIECE`: hyper asks
/// for the next piece only once its write buffer has room, so the body (and what it holds)
/// lives until the answer is nearly all on the wire, not just until hyper has taken it.
struct Held<G> {
    inner: axum::body::Body,
    rest: axum::body::Bytes,
    _guard: G,
}

const PIECE: usize = 64 * 1024;

impl<G: Send + 'static> http_body::Body for Held<G> {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        // `Held` is Unpin: `Body` is, and the guard is never pinned.
        let this = self.get_mut();
        if this.rest.is_empty() {
            match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
                std::task::Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => this.rest = data,
                    Err(frame) => return std::task::Poll::Ready(Some(Ok(frame))),
                },
                other => return other,
            }
        }
        let n = this.rest.len().min(PIECE);
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(this.rest.split_to(n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let mut h = self.inner.size_hint();
        let rest = self.rest.len() as u64;
        h.set_lower(h.lower() + rest);
        if let Some(u) = h.upper() {
            h.set_upper(u + rest);
        }
        h
    }
}

impl<G> Unpin for Held<G> {}

/// Callers for the limits' tests.
#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Arc;

    use secrets_core::UserName;

    use crate::domain::Principal;

    pub fn user(name: &str) -> Principal {
        Principal::User(UserName::new(name).unwrap())
    }

    pub fn job(owner: &str, id: &str) -> Principal {
        Principal::Job {
            id: id.into(),
            owner: UserName::new(owner).unwrap(),
            uris: Arc::new(HashSet::new()),
        }
    }
}
