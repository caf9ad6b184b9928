//! The seam between the store and etcd: `Kv`, the few calls the store makes to one etcd
//! member, in the store's own terms, and `Endpoint`, which makes them with `etcd_client`.
//!
//! It exists so that unit tests can put a member that fails on purpose behind the retries,
//! the lost-answer check, the watch and the barrier (`fake.rs`); it is not meant for a second
//! backend. What it cannot show is the client's own behaviour (connection, TLS, log-in,
//! `require_leader`): the end-to-end tests run a real etcd for that.

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, KvClient, Txn, TxnOp,
    WatchOptions,
};

/// The largest gRPC message accepted from etcd (a page, a batch of watch events).
const MAX_MESSAGE: usize = 256 << 20;

/// A key and its value, as etcd holds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Item {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// The revision of the key's last write (of its deletion, in a delete event).
    pub mod_revision: i64,
    /// Writes since the key was created: 1 for its first.
    pub version: i64,
}

impl From<&etcd_client::KeyValue> for Item {
    fn from(kv: &etcd_client::KeyValue) -> Self {
        Item {
            key: kv.key().to_vec(),
            value: kv.value().to_vec(),
            mod_revision: kv.mod_revision(),
            version: kv.version(),
        }
    }
}

/// One page of a range read.
#[derive(Debug)]
pub(super) struct Page {
    pub items: Vec<Item>,
    /// Keys beyond the limit remain.
    pub more: bool,
    /// etcd's revision when it answered.
    pub revision: i64,
}

/// A write transaction: `ops` and a write of `clock` when `when` holds (always, without a
/// condition), only the write of `clock` otherwise.
#[derive(Debug, Clone)]
pub(super) struct Write {
    pub when: Option<When>,
    pub ops: Vec<Op>,
    /// The key every write transaction of the store also writes (see `mod.rs`).
    pub clock: String,
}

/// The condition of a write: whether a key exists.
#[derive(Debug, Clone)]
pub(super) enum When {
    Absent(String),
    Present(String),
}

#[derive(Debug, Clone)]
pub(super) enum Op {
    Put(String, Vec<u8>),
    Delete(String),
}

impl Write {
    fn to_txn(&self) -> Txn {
        let tick = || TxnOp::put(self.clock.clone(), Vec::new(), None);
        let ops: Vec<TxnOp> = self
            .ops
            .iter()
            .map(|op| match op {
                Op::Put(k, v) => TxnOp::put(k.clone(), v.clone(), None),
                Op::Delete(k) => TxnOp::delete(k.clone(), None),
            })
            .chain([tick()])
            .collect();
        let compare = match &self.when {
            None => return Txn::new().and_then(ops),
            Some(When::Absent(k)) => Compare::create_revision(k.clone(), CompareOp::Equal, 0),
            Some(When::Present(k)) => Compare::create_revision(k.clone(), CompareOp::Greater, 0),
        };
        Txn::new().when([compare]).and_then(ops).or_else([tick()])
    }
}

/// The outcome of a write transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Written {
    /// The transaction's condition held (always, without one).
    pub succeeded: bool,
    pub revision: u64,
    /// A delete removed something.
    pub deleted: bool,
}

impl From<&etcd_client::TxnResponse> for Written {
    fn from(r: &etcd_client::TxnResponse) -> Self {
        Written {
            succeeded: r.succeeded(),
            revision: r
                .header()
                .and_then(|h| u64::try_from(h.revision()).ok())
                .unwrap_or(0),
            deleted: r
                .op_responses()
                .iter()
                .any(|op| matches!(op, etcd_client::TxnOpResponse::Delete(d) if d.deleted() > 0)),
        }
    }
}

/// One event of a watch.
#[derive(Debug, Clone)]
pub(super) struct Event {
    pub kind: EventType,
    pub item: Item,
}

/// One message of a watch stream.
#[derive(Debug, Default)]
pub(super) struct Batch {
    pub events: Vec<Event>,
    pub canceled: bool,
    /// Above 0 when etcd cancelled the watch because it compacted past its start.
    pub compact_revision: i64,
    pub cancel_reason: String,
}

/// The calls the store makes to one etcd member. Each is one request; retries, deadlines
/// and the choice of member are the caller's (`rpc.rs`).
#[async_trait]
pub(super) trait Kv: Send + Sync + std::fmt::Debug {
    /// Names the member in logs and errors.
    fn url(&self) -> &str;
    /// One key, by a linearizable read.
    async fn get(&self, key: &str) -> Result<Option<Item>, etcd_client::Error>;
    /// At most `limit` keys of `[from, end)` in key order, at `revision` (0: the newest).
    async fn range(
        &self,
        from: &[u8],
        end: &[u8],
        limit: i64,
        revision: i64,
    ) -> Result<Page, etcd_client::Error>;
    async fn txn(&self, write: &Write) -> Result<Written, etcd_client::Error>;
    /// Several keys read at one revision (one transaction), in the order asked; an answer of
    /// another length is the caller's to refuse.
    async fn get_all(&self, keys: &[String]) -> Result<Vec<Option<Item>>, etcd_client::Error>;
    /// Connects, and logs in where etcd wants a password, unless that was done already.
    async fn connect(&self) -> Result<(), etcd_client::Error>;
    /// Every event under `prefix` from revision `start` on.
    async fn watch(&self, prefix: &str, start: u64) -> Result<Box<dyn Events>, etcd_client::Error>;
    /// Logs in again: etcd forgot the token (it restarted), and a stream does not refresh it.
    async fn refresh_token(&self) -> Result<(), etcd_client::Error>;
}

/// A watch stream.
#[async_trait]
pub(super) trait Events: Send {
    /// The next message; `None` when the stream ended.
    async fn next(&mut self) -> Result<Option<Batch>, etcd_client::Error>;
}

/// The first key after every key that starts with `prefix`.
pub(super) fn range_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// One etcd endpoint and its client, connected on first use.
pub(super) struct Endpoint {
    url: String,
    options: ConnectOptions,
    client: tokio::sync::Mutex<Option<Client>>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint").field("url", &self.url).finish()
    }
}

impl Endpoint {
    pub(super) fn new(url: String, options: ConnectOptions) -> Self {
        Endpoint {
            url,
            options,
            client: tokio::sync::Mutex::new(None),
        }
    }

    async fn client(&self) -> Result<Client, etcd_client::Error> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = Client::connect([self.url.as_str()], Some(self.options.clone())).await?;
        *slot = Some(c.clone());
        Ok(c)
    }

    async fn kv(&self) -> Result<KvClient, etcd_client::Error> {
        Ok(self
            .client()
            .await?
            .kv_client()
            .max_decoding_message_size(MAX_MESSAGE))
    }
}

#[async_trait]
impl Kv for Endpoint {
    fn url(&self) -> &str {
        &self.url
    }

    async fn get(&self, key: &str) -> Result<Option<Item>, etcd_client::Error> {
        let resp = self.kv().await?.get(key, None).await?;
        Ok(resp.kvs().first().map(Item::from))
    }

    async fn range(
        &self,
        from: &[u8],
        end: &[u8],
        limit: i64,
        revision: i64,
    ) -> Result<Page, etcd_client::Error> {
        let mut opts = GetOptions::new().with_range(end).with_limit(limit);
        if revision > 0 {
            opts = opts.with_revision(revision);
        }
        let resp = self.kv().await?.get(from, Some(opts)).await?;
        Ok(Page {
            items: resp.kvs().iter().map(Item::from).collect(),
            more: resp.more(),
            revision: resp.header().map_or(0, |h| h.revision()),
        })
    }

    async fn txn(&self, write: &Write) -> Result<Written, etcd_client::Error> {
        let resp = self.kv().await?.txn(write.to_txn()).await?;
        Ok(Written::from(&resp))
    }

    async fn get_all(&self, keys: &[String]) -> Result<Vec<Option<Item>>, etcd_client::Error> {
        let txn = Txn::new().and_then(
            keys.iter()
                .map(|k| TxnOp::get(k.clone(), None))
                .collect::<Vec<_>>(),
        );
        let resp = self.kv().await?.txn(txn).await?;
        Ok(resp
            .op_responses()
            .into_iter()
            .filter_map(|op| match op {
                etcd_client::TxnOpResponse::Get(g) => Some(g.kvs().first().map(Item::from)),
                _ => None,
            })
            .collect())
    }

    async fn connect(&self) -> Result<(), etcd_client::Error> {
        self.client().await.map(drop)
    }

    async fn watch(&self, prefix: &str, start: u64) -> Result<Box<dyn Events>, etcd_client::Error> {
        let opts = WatchOptions::new()
            .with_range(range_end(prefix))
            .with_start_revision(i64::try_from(start).unwrap_or(i64::MAX));
        let stream = self
            .client()
            .await?
            .watch_client()
            .max_decoding_message_size(MAX_MESSAGE)
            .watch(prefix.to_owned(), Some(opts))
            .await?;
        Ok(Box::new(Stream(stream)))
    }

    async fn refresh_token(&self) -> Result<(), etcd_client::Error> {
        self.client().await?.refresh_token().await
    }
}

/// A watch stream of the real client.
struct Stream(etcd_client::WatchStream);

#[async_trait]
impl Events for Stream {
    async fn next(&mut self) -> Result<Option<Batch>, etcd_client::Error> {
        Ok(self.0.message().await?.map(|resp| Batch {
            events: resp
                .events()
                .iter()
                .filter_map(|ev| {
                    Some(Event {
                        kind: ev.event_type(),
                        item: ev.kv()?.into(),
                    })
                })
                .collect(),
            canceled: resp.canceled(),
            compact_revision: resp.compact_revision(),
            cancel_reason: resp.cancel_reason().to_owned(),
        }))
    }
}
