//! A fake etcd for unit tests of the calls, the lost-answer check and the barrier: members
//! that share one key space, each failing as the test scripts it.
//!
//! It applies a transaction as etcd does (one revision per transaction, mod revisions,
//! versions, a delete event only for a key that existed) and streams the events to watches.
//! It keeps no older values: a read at an older revision sees the newest ones, so a test must
//! not write while the store loads.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::EventType;
use tokio::sync::mpsc;

use super::kv::{Batch, Event, Events, Item, Kv, Op, Page, When, Write, Written};

/// The kinds of calls, for scripting faults and counting calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Call {
    Get,
    Range,
    Txn,
    /// `get_all`: the lost-answer check.
    Check,
    Watch,
}

/// What a scripted call does instead of answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fault {
    /// Fails at once with a transient error (unavailable); nothing applied.
    Unavailable,
    /// Fails at once with an error another member would not cure; nothing applied.
    Refused,
    /// Never answers; nothing applied.
    Hang,
    /// Applies the write, then never answers: its answer was lost.
    LoseAnswer,
}

/// How a member misbehaves from now on, whatever the script says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Trouble {
    None,
    /// Its watches deliver each message this late.
    SlowWatch(Duration),
    /// Its watches deliver nothing more; its reads and writes answer.
    LaggingWatch,
    /// Nothing it does answers: calls and watch messages alike.
    Hung,
}

#[derive(Debug)]
struct Record {
    value: Vec<u8>,
    mod_revision: i64,
    version: i64,
}

#[derive(Debug)]
struct State {
    map: BTreeMap<Vec<u8>, Record>,
    revision: i64,
    /// Every event, for watches that start in the past.
    history: Vec<Event>,
    /// Open watches: member, prefix, where their messages go.
    watches: Vec<(usize, Vec<u8>, mpsc::UnboundedSender<Batch>)>,
    trouble: Vec<Trouble>,
    /// Faults to come: each is taken by the first call of its kind to its member.
    script: Vec<(usize, Call, Fault)>,
    /// Every call, in order: member and kind.
    calls: Vec<(usize, Call)>,
}

#[derive(Debug)]
pub(super) struct Etcd {
    state: Mutex<State>,
}

impl Etcd {
    pub(super) fn new(members: usize) -> Arc<Self> {
        Arc::new(Etcd {
            state: Mutex::new(State {
                map: BTreeMap::new(),
                revision: 1,
                history: Vec::new(),
                watches: Vec::new(),
                trouble: vec![Trouble::None; members],
                script: Vec::new(),
                calls: Vec::new(),
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// The members, as the store's endpoints.
    pub(super) fn members(self: &Arc<Self>) -> Vec<Arc<dyn Kv>> {
        (0..self.state().trouble.len())
            .map(|index| {
                Arc::new(Member {
                    etcd: self.clone(),
                    index,
                    url: format!("fake-{index}"),
                }) as Arc<dyn Kv>
            })
            .collect()
    }

    /// The next call of kind `call` to `member` fails with `fault`.
    pub(super) fn script(&self, member: usize, call: Call, fault: Fault) {
        self.state().script.push((member, call, fault));
    }

    pub(super) fn trouble(&self, member: usize, trouble: Trouble) {
        self.state().trouble[member] = trouble;
    }

    /// The members that received calls of kind `call`, in order; the log is emptied.
    pub(super) fn calls(&self, call: Call) -> Vec<usize> {
        let mut s = self.state();
        let members = s
            .calls
            .iter()
            .filter(|(_, c)| *c == call)
            .map(|(m, _)| *m)
            .collect();
        s.calls.retain(|(_, c)| *c != call);
        members
    }

    pub(super) fn revision(&self) -> i64 {
        self.state().revision
    }

    /// A write made by someone else (another replica).
    pub(super) fn write(&self, write: &Write) -> Written {
        self.state().apply(write)
    }
}

impl State {
    fn apply(&mut self, write: &Write) -> Written {
        let holds = match &write.when {
            None => true,
            Some(When::Absent(k)) => !self.map.contains_key(k.as_bytes()),
            Some(When::Present(k)) => self.map.contains_key(k.as_bytes()),
        };
        self.revision += 1;
        let revision = self.revision;
        let tick = Op::Put(write.clock.clone(), Vec::new());
        let ops = if holds { write.ops.as_slice() } else { &[] };
        let mut events = Vec::new();
        let mut deleted = false;
        for op in ops.iter().chain([&tick]) {
            match op {
                Op::Put(k, v) => {
                    let r = self.map.entry(k.clone().into_bytes()).or_insert(Record {
                        value: Vec::new(),
                        mod_revision: 0,
                        version: 0,
                    });
                    r.value = v.clone();
                    r.mod_revision = revision;
                    r.version += 1;
                    events.push(Event {
                        kind: EventType::Put,
                        item: Item {
                            key: k.clone().into_bytes(),
                            value: v.clone(),
                            mod_revision: revision,
                            version: r.version,
                        },
                    });
                }
                Op::Delete(k) => {
                    if self.map.remove(k.as_bytes()).is_some() {
                        deleted = true;
                        events.push(Event {
                            kind: EventType::Delete,
                            item: Item {
                                key: k.clone().into_bytes(),
                                value: Vec::new(),
                                mod_revision: revision,
                                version: 0,
                            },
                        });
                    }
                }
            }
        }
        self.history.extend(events.iter().cloned());
        let trouble = self.trouble.clone();
        self.watches.retain(|(member, prefix, tx)| {
            let mine: Vec<Event> = events
                .iter()
                .filter(|e| e.item.key.starts_with(prefix))
                .cloned()
                .collect();
            match trouble[*member] {
                Trouble::LaggingWatch | Trouble::Hung => true,
                _ if mine.is_empty() => true,
                _ => tx
                    .send(Batch {
                        events: mine,
                        ..Batch::default()
                    })
                    .is_ok(),
            }
        });
        Written {
            succeeded: holds,
            revision: u64::try_from(revision).unwrap(),
            deleted,
        }
    }

    fn item(&self, key: &[u8]) -> Option<Item> {
        self.map.get(key).map(|r| Item {
            key: key.to_vec(),
            value: r.value.clone(),
            mod_revision: r.mod_revision,
            version: r.version,
        })
    }
}

#[derive(Debug)]
struct Member {
    etcd: Arc<Etcd>,
    index: usize,
    url: String,
}

impl Member {
    /// Logs the call; the fault it meets, if any.
    fn begin(&self, call: Call) -> Option<Fault> {
        let mut s = self.etcd.state();
        s.calls.push((self.index, call));
        if s.trouble[self.index] == Trouble::Hung {
            return Some(Fault::Hang);
        }
        let at = s
            .script
            .iter()
            .position(|&(m, c, _)| m == self.index && c == call)?;
        Some(s.script.remove(at).2)
    }
}

/// What a fault does to a call that applied nothing.
async fn fail<T>(fault: Fault) -> Result<T, etcd_client::Error> {
    match fault {
        Fault::Unavailable => Err(etcd_client::Error::GRpcStatus(tonic::Status::unavailable(
            "fake: unavailable",
        ))),
        Fault::Refused => Err(etcd_client::Error::GRpcStatus(
            tonic::Status::invalid_argument("fake: refused"),
        )),
        Fault::Hang | Fault::LoseAnswer => std::future::pending().await,
    }
}

#[async_trait]
impl Kv for Member {
    fn url(&self) -> &str {
        &self.url
    }

    async fn get(&self, key: &str) -> Result<Option<Item>, etcd_client::Error> {
        if let Some(f) = self.begin(Call::Get) {
            return fail(f).await;
        }
        Ok(self.etcd.state().item(key.as_bytes()))
    }

    async fn range(
        &self,
        from: &[u8],
        end: &[u8],
        limit: i64,
        _revision: i64,
    ) -> Result<Page, etcd_client::Error> {
        if let Some(f) = self.begin(Call::Range) {
            return fail(f).await;
        }
        let s = self.etcd.state();
        let mut keys = s
            .map
            .range::<[u8], _>((
                std::ops::Bound::Included(from),
                std::ops::Bound::Excluded(end),
            ))
            .map(|(k, _)| k.clone());
        let limit = usize::try_from(limit).unwrap();
        let items: Vec<Item> = keys
            .by_ref()
            .take(limit)
            .map(|k| s.item(&k).unwrap())
            .collect();
        Ok(Page {
            items,
            more: keys.next().is_some(),
            revision: s.revision,
        })
    }

    async fn txn(&self, write: &Write) -> Result<Written, etcd_client::Error> {
        match self.begin(Call::Txn) {
            None => Ok(self.etcd.write(write)),
            Some(Fault::LoseAnswer) => {
                self.etcd.write(write);
                std::future::pending().await
            }
            Some(f) => fail(f).await,
        }
    }

    async fn get_all(&self, keys: &[String]) -> Result<Vec<Option<Item>>, etcd_client::Error> {
        if let Some(f) = self.begin(Call::Check) {
            return fail(f).await;
        }
        let s = self.etcd.state();
        Ok(keys.iter().map(|k| s.item(k.as_bytes())).collect())
    }

    async fn connect(&self) -> Result<(), etcd_client::Error> {
        Ok(())
    }

    async fn watch(&self, prefix: &str, start: u64) -> Result<Box<dyn Events>, etcd_client::Error> {
        if let Some(f) = self.begin(Call::Watch) {
            return fail(f).await;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let mut s = self.etcd.state();
        let prefix = prefix.as_bytes().to_vec();
        let past: Vec<Event> = s
            .history
            .iter()
            .filter(|e| {
                u64::try_from(e.item.mod_revision).unwrap() >= start
                    && e.item.key.starts_with(&prefix)
            })
            .cloned()
            .collect();
        if !past.is_empty() {
            tx.send(Batch {
                events: past,
                ..Batch::default()
            })
            .unwrap();
        }
        s.watches.push((self.index, prefix, tx));
        Ok(Box::new(Stream {
            etcd: self.etcd.clone(),
            member: self.index,
            rx,
            waiting: None,
        }))
    }

    async fn refresh_token(&self) -> Result<(), etcd_client::Error> {
        Ok(())
    }
}

/// A fake watch stream: what its member sent, each message late while the member's watch is
/// slow. Cancel-safe, as the real stream is: a message waiting out its delay is kept.
struct Stream {
    etcd: Arc<Etcd>,
    member: usize,
    rx: mpsc::UnboundedReceiver<Batch>,
    waiting: Option<(tokio::time::Instant, Batch)>,
}

#[async_trait]
impl Events for Stream {
    async fn next(&mut self) -> Result<Option<Batch>, etcd_client::Error> {
        if self.waiting.is_none() {
            let Some(batch) = self.rx.recv().await else {
                return Ok(None);
            };
            let delay = match self.etcd.state().trouble[self.member] {
                Trouble::SlowWatch(d) => d,
                _ => Duration::ZERO,
            };
            self.waiting = Some((tokio::time::Instant::now() + delay, batch));
        }
        if let Some((at, _)) = &self.waiting {
            tokio::time::sleep_until(*at).await;
        }
        Ok(self.waiting.take().map(|(_, batch)| batch))
    }
}
