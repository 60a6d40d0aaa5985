//! What to do next with one RemediationAudit: a pure function of the object, a summary of the store runtime and
//! this replica's own-write state, table-tested below without an API server or a database.

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{EXPIRED_ANNOTATION, FINALIZER};
use crate::audit::status;
use crate::crd::{AuditState, EmbeddingState, RemediationAuditStatus};
use crate::runtime::StoreRuntime;

/// How often a persisted audit whose vector is still missing is looked at again.
pub const EMBEDDING_RECHECK: Duration = Duration::from_secs(15);
/// How often an audit rejected as a duplicate is tried again (the holder may be deleted meanwhile).
pub const DUPLICATE_RECHECK: Duration = Duration::from_secs(30);
/// Slack between the operator's clock, the database's (`persistedAt`) and the API server's (`deletionTimestamp`)
/// when telling the operator's own TTL deletion from a user's.
pub const TTL_CLOCK_SLACK: Duration = Duration::from_secs(60);

/// The object as the decision sees it.
#[derive(Clone, Copy)]
pub struct ObjectView<'a> {
    pub meta: &'a ObjectMeta,
    pub status: Option<&'a RemediationAuditStatus>,
    /// Why the object does not decode (`None`: it does).
    pub undecodable: Option<&'a str>,
}

/// The store runtime as the decision sees it (`None` in [`Facts::store`]: the DataStorage is not ready).
#[derive(Clone, Copy)]
pub struct StoreView<'a> {
    /// `Err(why)` while writes are blocked.
    pub writable: Result<(), &'a str>,
    pub cr_ttl: Option<Duration>,
    /// The embedding state of an audit stored without its vector under this runtime.
    pub vectorless: EmbeddingState,
}

impl<'a> StoreView<'a> {
    pub fn of(rt: &'a StoreRuntime) -> Self {
        Self {
            writable: rt.writable.as_ref().map(|_| ()).map_err(String::as_str),
            cr_ttl: rt.cr_ttl,
            vectorless: match (rt.embeddings_enabled, rt.embedder.is_some()) {
                (false, _) => EmbeddingState::Disabled,
                (true, false) => EmbeddingState::Unavailable,
                (true, true) => EmbeddingState::Pending,
            },
        }
    }
}

pub struct Facts<'a> {
    pub object: ObjectView<'a>,
    pub store: Option<StoreView<'a>>,
    /// The cached object is older than this replica's last write to it.
    pub behind_own_write: bool,
    pub now: DateTime<Utc>,
}

/// Whether a deletion is recorded on the stored audit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordDeletion {
    /// Never stored: nothing to record.
    No,
    Yes,
    /// Carries the operator's expiry annotation: skipped only when the store proves the TTL had passed (see
    /// [`own_ttl_deletion`]); anyone who may edit the object can set the annotation.
    UnlessOwnTtl,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Nothing to do until the object changes.
    Wait,
    /// Nothing to do now; look again after this long.
    RequeueAfter(Duration),
    /// The object does not decode: reject it by name.
    RejectUndecodable,
    /// Being deleted: record the deletion as told, then release the finalizer.
    Finalize(RecordDeletion),
    /// Being deleted, and recording it needs the store, which is not ready: retry with backoff.
    DeferDeletion,
    /// Not stored and the store cannot take it now: status `Retrying`.
    Retry {
        reason: &'static str,
        message: String,
    },
    /// Validate, sanitize, embed and write the current generation.
    Write,
    /// Persisted without its vector: read from the store whether it has arrived (no re-validation).
    RecheckEmbedding,
    /// Persisted for longer than the TTL: delete the resource (the stored audit stays).
    Expire,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// First sight of a live, decodable object: add the finalizer before anything else.
    pub add_finalizer: bool,
    pub next: Next,
}

impl Decision {
    fn only(next: Next) -> Self {
        Self {
            add_finalizer: false,
            next,
        }
    }
}

pub fn decide(f: &Facts) -> Decision {
    let o = f.object;
    let has_finalizer = o
        .meta
        .finalizers
        .as_ref()
        .is_some_and(|fs| fs.iter().any(|x| x == FINALIZER));
    if o.meta.deletion_timestamp.is_some() {
        return Decision::only(deleting(f, has_finalizer));
    }
    if f.behind_own_write {
        return Decision::only(Next::Wait);
    }
    let current = o
        .status
        .filter(|s| s.observed_generation == o.meta.generation);
    if o.undecodable.is_some() {
        let rejected = current.is_some_and(|s| s.state == Some(AuditState::Rejected));
        return Decision::only(if rejected {
            Next::Wait
        } else {
            Next::RejectUndecodable
        });
    }
    Decision {
        add_finalizer: !has_finalizer,
        next: live(f, current),
    }
}

fn deleting(f: &Facts, has_finalizer: bool) -> Next {
    if !has_finalizer {
        return Next::Wait;
    }
    let stored = f.object.status.is_some_and(|s| s.audit_id.is_some());
    let claimed_expired = f
        .object
        .meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(EXPIRED_ANNOTATION))
        .is_some_and(|v| v == "true");
    let record = match (stored, claimed_expired) {
        (false, _) => RecordDeletion::No,
        (true, false) => RecordDeletion::Yes,
        (true, true) => RecordDeletion::UnlessOwnTtl,
    };
    if record != RecordDeletion::No && f.store.is_none() {
        return Next::DeferDeletion;
    }
    Next::Finalize(record)
}

/// A live, decodable object; `current`: its status when it describes the current generation.
fn live(f: &Facts, current: Option<&RemediationAuditStatus>) -> Next {
    match current.and_then(|s| s.state.map(|state| (state, s))) {
        // A duplicate remediationRequestId is tried again (its holder may have gone, see
        // DUPLICATE_RECHECK); other rejections wait for a spec change.
        Some((AuditState::Rejected, s)) if !status::rejected_as_duplicate(s) => Next::Wait,
        Some((AuditState::Persisted, s)) => match s.embedding {
            Some(e @ (EmbeddingState::Pending | EmbeddingState::Unavailable)) => {
                vector_missing(f, e)
            }
            _ => ttl(f, s),
        },
        _ => match f.store {
            None => Next::Retry {
                reason: "StoreNotReady",
                message: "the DataStorage is not ready yet (see `kubectl get dstore`)".into(),
            },
            Some(StoreView {
                writable: Err(why), ..
            }) => Next::Retry {
                reason: "StoreNotWritable",
                message: why.to_string(),
            },
            Some(_) => Next::Write,
        },
    }
}

/// Persisted without its vector (`state` is the status' `embedding`). Only a store with an embedder can add the
/// vector (the backfill), and only a changed runtime can change the state: anything else waits a recheck interval
/// without doing any work.
fn vector_missing(f: &Facts, state: EmbeddingState) -> Next {
    match f.store {
        Some(s) if s.vectorless == EmbeddingState::Pending || s.vectorless != state => {
            Next::RecheckEmbedding
        }
        _ => Next::RequeueAfter(EMBEDDING_RECHECK),
    }
}

/// Persisted and settled: delete the resource once its TTL after persistence has passed.
fn ttl(f: &Facts, s: &RemediationAuditStatus) -> Next {
    let Some(ttl) = f.store.and_then(|s| s.cr_ttl) else {
        return Next::Wait;
    };
    let Some(persisted_at) = s
        .persisted_at
        .as_deref()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
    else {
        return Next::Wait;
    };
    let age = f
        .now
        .signed_duration_since(persisted_at)
        .to_std()
        .unwrap_or_default();
    if age < ttl {
        Next::RequeueAfter(ttl - age + Duration::from_millis(500))
    } else {
        Next::Expire
    }
}

/// Whether a deletion carrying the expiry annotation is the operator's own: the TTL had passed, by the store's
/// `persisted_at`, when the resource was deleted. A tenant who sets the annotation and deletes earlier gets the
/// deletion recorded; one who deletes after the TTL has passed does what the operator was about to do.
pub fn own_ttl_deletion(
    stored_persisted_at: DateTime<Utc>,
    ttl: Option<Duration>,
    deleted_at: Option<DateTime<Utc>>,
) -> bool {
    let (Some(ttl), Some(deleted_at)) = (ttl, deleted_at) else {
        return false;
    };
    let Ok(due) = chrono::Duration::from_std(ttl.saturating_sub(TTL_CLOCK_SLACK)) else {
        return false;
    };
    deleted_at >= stored_persisted_at + due
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    const NOW: &str = "2026-06-01T12:00:00Z";

    fn now() -> DateTime<Utc> {
        NOW.parse().unwrap()
    }

    /// A fixture: an object at generation 2 with the given finalizer/deletion/annotation and status.
    #[derive(Clone, Default)]
    struct Obj {
        finalizer: bool,
        deleting: bool,
        expired_annotation: bool,
        status: Option<RemediationAuditStatus>,
        undecodable: bool,
    }

    impl Obj {
        fn seen() -> Self {
            Self {
                finalizer: true,
                ..Self::default()
            }
        }
        fn status(mut self, state: AuditState, generation: i64) -> Self {
            self.status = Some(RemediationAuditStatus {
                state: Some(state),
                observed_generation: Some(generation),
                ..RemediationAuditStatus::default()
            });
            self
        }
        fn duplicate(self) -> Self {
            let mut o = self.status(AuditState::Rejected, 2);
            let s = o.status.as_mut().unwrap();
            s.conditions = crate::audit::status::compute(
                None,
                Some(2),
                &crate::audit::status::Outcome::Rejected {
                    errors: vec![crate::audit::FieldError::new(
                        "remediationRequestId",
                        crate::audit::Reason::Duplicate,
                        "held",
                    )],
                },
                NOW,
            )
            .conditions;
            o
        }
        fn persisted(self, embedding: EmbeddingState, at: &str) -> Self {
            let mut o = self.status(AuditState::Persisted, 2);
            let s = o.status.as_mut().unwrap();
            s.audit_id = Some(7);
            s.embedding = Some(embedding);
            s.persisted_at = Some(at.into());
            o
        }
        fn meta(&self) -> ObjectMeta {
            ObjectMeta {
                name: Some("a".into()),
                namespace: Some("ns".into()),
                generation: Some(2),
                finalizers: self.finalizer.then(|| vec![FINALIZER.to_string()]),
                deletion_timestamp: self.deleting.then(|| {
                    Time(k8s_openapi::jiff::Timestamp::from_second(now().timestamp()).unwrap())
                }),
                annotations: self
                    .expired_annotation
                    .then(|| [(EXPIRED_ANNOTATION.to_string(), "true".to_string())].into()),
                ..ObjectMeta::default()
            }
        }
    }

    fn store(vectorless: EmbeddingState, ttl: Option<u64>) -> Option<StoreView<'static>> {
        Some(StoreView {
            writable: Ok(()),
            cr_ttl: ttl.map(Duration::from_secs),
            vectorless,
        })
    }

    fn run(obj: &Obj, store: Option<StoreView<'static>>, behind: bool) -> Decision {
        let meta = obj.meta();
        decide(&Facts {
            object: ObjectView {
                meta: &meta,
                status: obj.status.as_ref(),
                undecodable: obj.undecodable.then_some("nested too deep"),
            },
            store,
            behind_own_write: behind,
            now: now(),
        })
    }

    fn next(next: Next) -> Decision {
        Decision::only(next)
    }

    fn first(next: Next) -> Decision {
        Decision {
            add_finalizer: true,
            next,
        }
    }

    #[test]
    fn decision_table() {
        use EmbeddingState::{Disabled, Pending, Stored, Unavailable};
        let ready = store(Pending, None);
        let blocked = Some(StoreView {
            writable: Err("PostgreSQL 13 is too old"),
            cr_ttl: None,
            vectorless: Pending,
        });
        let not_ready = Retry("StoreNotReady");
        let deleting = |o: Obj| Obj {
            deleting: true,
            ..o
        };
        let undecodable = |o: Obj| Obj {
            undecodable: true,
            ..o
        };
        let an_hour_ago = "2026-06-01T11:00:00Z";
        #[rustfmt::skip]
        let cases: Vec<(&str, Obj, Option<StoreView<'static>>, bool, Decision)> = vec![
            ("new object: finalizer, then write", Obj::default(), ready, false, first(Next::Write)),
            ("seen, not stored yet: write", Obj::seen(), ready, false, next(Next::Write)),
            ("retrying: write again", Obj::seen().status(AuditState::Retrying, 2), ready, false, next(Next::Write)),
            ("status of an older generation: write the new one", Obj::seen().persisted(Stored, NOW).status(AuditState::Persisted, 1), ready, false, next(Next::Write)),
            ("store not ready: retrying", Obj::seen(), None, false, not_ready.decision(false)),
            ("store not ready, first sight: finalizer, retrying", Obj::default(), None, false, not_ready.decision(true)),
            ("writes blocked: retrying with the reason", Obj::seen(), blocked, false, next(Next::Retry { reason: "StoreNotWritable", message: "PostgreSQL 13 is too old".into() })),
            ("own-write lag: wait for the newer version", Obj::seen(), ready, true, next(Next::Wait)),
            ("rejected, spec unchanged: wait", Obj::seen().status(AuditState::Rejected, 2), ready, false, next(Next::Wait)),
            ("rejected as a duplicate: try again (the holder may have gone)", Obj::seen().duplicate(), ready, false, next(Next::Write)),
            ("rejected as a duplicate, store not ready: retrying", Obj::seen().duplicate(), None, false, not_ready.decision(false)),
            ("rejected at an older generation: write", Obj::seen().status(AuditState::Rejected, 1), ready, false, next(Next::Write)),
            ("settled, no TTL: wait", Obj::seen().persisted(Stored, NOW), ready, false, next(Next::Wait)),
            ("settled, embeddings disabled: wait", Obj::seen().persisted(Disabled, NOW), store(Disabled, None), false, next(Next::Wait)),
            ("settled, TTL not reached: requeue at the deadline", Obj::seen().persisted(Stored, an_hour_ago), store(Pending, Some(7200)), false, next(Next::RequeueAfter(Duration::from_millis(3_600_500)))),
            ("settled, TTL passed: expire", Obj::seen().persisted(Stored, an_hour_ago), store(Pending, Some(60)), false, next(Next::Expire)),
            ("settled, unparsable persistedAt: wait", Obj::seen().persisted(Stored, "yesterday"), store(Pending, Some(60)), false, next(Next::Wait)),
            ("pending vector with an embedder: recheck the store", Obj::seen().persisted(Pending, NOW), ready, false, next(Next::RecheckEmbedding)),
            ("pending vector, store not ready: requeue, no work", Obj::seen().persisted(Pending, NOW), None, false, next(Next::RequeueAfter(EMBEDDING_RECHECK))),
            ("unavailable, still no embedder: requeue, no work", Obj::seen().persisted(Unavailable, NOW), store(Unavailable, None), false, next(Next::RequeueAfter(EMBEDDING_RECHECK))),
            ("unavailable, embedder back: recheck", Obj::seen().persisted(Unavailable, NOW), ready, false, next(Next::RecheckEmbedding)),
            ("pending, embedder gone: recheck (state becomes Unavailable)", Obj::seen().persisted(Pending, NOW), store(Unavailable, None), false, next(Next::RecheckEmbedding)),
            ("pending, embeddings disabled since: recheck", Obj::seen().persisted(Pending, NOW), store(Disabled, None), false, next(Next::RecheckEmbedding)),
            ("deleting, stored: record the deletion", deleting(Obj::seen().persisted(Stored, NOW)), ready, false, next(Next::Finalize(RecordDeletion::Yes))),
            ("deleting, never stored: just release", deleting(Obj::seen()), None, false, next(Next::Finalize(RecordDeletion::No))),
            ("deleting, stored, store not ready: defer", deleting(Obj::seen().persisted(Stored, NOW)), None, false, next(Next::DeferDeletion)),
            ("deleting, without our finalizer: nothing", deleting(Obj::default()), ready, false, next(Next::Wait)),
            ("deleting with the expiry annotation: the store decides", deleting(Obj { expired_annotation: true, ..Obj::seen().persisted(Stored, NOW) }), ready, false, next(Next::Finalize(RecordDeletion::UnlessOwnTtl))),
            ("deleting beats own-write lag", deleting(Obj::seen().persisted(Stored, NOW)), ready, true, next(Next::Finalize(RecordDeletion::Yes))),
            ("malformed: reject by name, no finalizer", undecodable(Obj::default()), ready, false, next(Next::RejectUndecodable)),
            ("malformed, store not ready: still rejected", undecodable(Obj::default()), None, false, next(Next::RejectUndecodable)),
            ("malformed, already rejected: wait", undecodable(Obj::default().status(AuditState::Rejected, 2)), ready, false, next(Next::Wait)),
            ("malformed after a stored generation: rejected", undecodable(Obj::seen().persisted(Stored, NOW).status(AuditState::Persisted, 1)), ready, false, next(Next::RejectUndecodable)),
            ("malformed, deleted after being stored: record, release", deleting(undecodable(Obj::seen().persisted(Stored, NOW))), ready, false, next(Next::Finalize(RecordDeletion::Yes))),
        ];
        assert!(cases.len() >= 15);
        for (name, obj, store, behind, want) in cases {
            assert_eq!(run(&obj, store, behind), want, "{name}");
        }
    }

    struct Retry(&'static str);
    impl Retry {
        fn decision(&self, add_finalizer: bool) -> Decision {
            Decision {
                add_finalizer,
                next: Next::Retry {
                    reason: self.0,
                    message: "the DataStorage is not ready yet (see `kubectl get dstore`)".into(),
                },
            }
        }
    }

    #[test]
    fn only_a_deletion_after_the_stored_ttl_is_the_operators_own() {
        let persisted: DateTime<Utc> = "2026-06-01T10:00:00Z".parse().unwrap();
        let hour = Some(Duration::from_secs(3600));
        let at = |t: &str| Some(t.parse::<DateTime<Utc>>().unwrap());
        assert!(
            own_ttl_deletion(persisted, hour, at("2026-06-01T11:00:05Z")),
            "after the TTL"
        );
        assert!(
            own_ttl_deletion(persisted, hour, at("2026-06-01T10:59:30Z")),
            "within the clock slack"
        );
        assert!(
            !own_ttl_deletion(persisted, hour, at("2026-06-01T10:10:00Z")),
            "a tenant's early deletion"
        );
        assert!(
            !own_ttl_deletion(persisted, None, at("2026-06-02T00:00:00Z")),
            "no TTL configured"
        );
        assert!(
            !own_ttl_deletion(persisted, hour, None),
            "no deletion timestamp"
        );
    }
}
