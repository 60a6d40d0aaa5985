//! Signed checkpoints of every chain head, for keeping outside PostgreSQL (`crate::checkpoint` writes them to a
//! ConfigMap).
//!
//! A checkpoint covers an instant `at` (see SQL `checkpoint_instant()`: after it, no history row with
//! `recorded_at <= at` can still commit). Its leaves are `(audit id, chain hash of the audit's latest history entry
//! recorded at or before at)` in id order, for every audit that has a current row and such an entry. Ids are
//! grouped in buckets of `bucketSize` consecutive ids; the checkpoint keeps the covered ids (as ranges), one
//! sha256 per non-empty bucket, their root, and an HMAC-SHA256 of all that with a key the database never sees.
//!
//! Verifying recomputes buckets from the database with the same cut-off: a changed record anywhere in a chain, a
//! consistent rewrite of a whole chain (new hashes throughout), and an audit whose rows were deleted each change
//! a bucket (a deleted one is also named: its id is in the checkpoint's ranges and no longer in the store). Writes
//! after `at` do not disturb it. The bucket is the unit of proof: a tampered audit makes the other audits of its
//! bucket unprovable too (with at most 4,096 buckets, a store of 100k audits has buckets of 64 ids).
//!
//! What this does not cover is in docs/security.md (the key's holder can sign anything; retention legitimately
//! removes history of non-held namespaces, which a checkpoint older than the retention run then reports).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::Row;

use super::{Store, StoreError};
use crate::audit::record::{canonical_json, sha256_hex};

/// The checkpoint format written by this version.
pub const FORMAT_VERSION: u32 = 1;
/// At most this many buckets: a checkpoint of 1M audits stays near 300 KB, under a ConfigMap's 1 MiB.
const MAX_BUCKETS: u64 = 4096;
const MIN_BUCKET_SIZE: i64 = 64;

/// The HMAC key checkpoints are signed with (from a Secret; never stored in the database).
#[derive(Clone)]
pub struct CheckpointKey(Vec<u8>);

impl CheckpointKey {
    /// A key of at least 16 bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, String> {
        let bytes = bytes.into();
        if bytes.len() < 16 {
            return Err(format!(
                "the checkpoint key has {} bytes; use at least 16 (e.g. `openssl rand -hex 32`)",
                bytes.len()
            ));
        }
        Ok(Self(bytes))
    }

    /// Names the key without revealing it: the first 16 hex digits of sha256("datastorage-checkpoint-key" || key).
    pub fn id(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"datastorage-checkpoint-key");
        h.update(&self.0);
        hex::encode(h.finalize())[..16].to_string()
    }

    /// HMAC-SHA256 (hex) of `message`.
    fn sign(&self, message: &[u8]) -> String {
        hex::encode(hmac_sha256(&self.0, message))
    }
}

/// HMAC-SHA256 (RFC 2104) over the sha2 crate the store already uses for its hashes. (The `hmac` crate for sha2
/// 0.10 turns on digest's `mac` feature, which rebuilds sqlx and every other user of sha2 0.10; the HMAC
/// construction itself is these few lines, checked against RFC 4231 below.)
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(message);
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// Compares without stopping at the first difference (a signature check must not leak how much of it matched).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl std::fmt::Debug for CheckpointKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CheckpointKey({})", self.id())
    }
}

/// One signed checkpoint (the JSON kept outside the database).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Checkpoint {
    pub version: u32,
    /// The instant covered, RFC 3339 with microseconds (PostgreSQL's precision).
    pub at: String,
    /// How many audits it covers.
    pub count: u64,
    pub max_id: i64,
    pub bucket_size: i64,
    /// The covered audit ids as ranges: `1-5,7,9-12`.
    pub ids: String,
    /// Bucket number (`id / bucketSize`) → sha256 (hex) of the bucket's leaves `"<id>:<chain hash>\n"` in id order.
    pub buckets: BTreeMap<i64, String>,
    /// sha256 (hex) of `"<bucket>:<hash>\n"` over the buckets in order.
    pub root: String,
    /// [`CheckpointKey::id`] of the signing key.
    pub key_id: String,
    /// HMAC-SHA256 (hex) of the canonical JSON of this object with `signature` empty.
    pub signature: String,
}

impl Checkpoint {
    /// Builds and signs the checkpoint of `heads` (`(audit id, chain hash)`, ascending ids) at `at`.
    pub fn build(at: DateTime<Utc>, heads: &[(i64, String)], key: &CheckpointKey) -> Self {
        let count = heads.len() as u64;
        let bucket_size = bucket_size_for(count);
        let mut cp = Self {
            version: FORMAT_VERSION,
            at: at.to_rfc3339_opts(SecondsFormat::Micros, true),
            count,
            max_id: heads.last().map_or(0, |h| h.0),
            bucket_size,
            ids: encode_ranges(heads.iter().map(|h| h.0)),
            buckets: bucket_hashes(heads, bucket_size),
            root: String::new(),
            key_id: key.id(),
            signature: String::new(),
        };
        cp.root = root_of(&cp.buckets);
        cp.signature = key.sign(cp.signed_text().as_bytes());
        cp
    }

    fn signed_text(&self) -> String {
        let mut unsigned = self.clone();
        unsigned.signature = String::new();
        canonical_json(&serde_json::to_value(&unsigned).unwrap_or_default())
    }

    /// Checks the signature, the key and the root; `Err` says which failed.
    pub fn check_signature(&self, key: &CheckpointKey) -> Result<(), String> {
        if self.version != FORMAT_VERSION {
            return Err(format!(
                "checkpoint format {} is not {FORMAT_VERSION}",
                self.version
            ));
        }
        if self.key_id != key.id() {
            return Err(format!(
                "the checkpoint was signed with key {} and this operator has key {}",
                self.key_id,
                key.id()
            ));
        }
        let expected = key.sign(self.signed_text().as_bytes());
        if !constant_time_eq(expected.as_bytes(), self.signature.as_bytes()) {
            return Err("the checkpoint's signature is invalid (it was altered)".into());
        }
        if root_of(&self.buckets) != self.root {
            return Err("the checkpoint's root does not match its buckets".into());
        }
        Ok(())
    }

    /// The instant covered.
    pub fn instant(&self) -> Result<DateTime<Utc>, String> {
        DateTime::parse_from_rfc3339(&self.at)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| format!("the checkpoint's time {:?} is unreadable: {e}", self.at))
    }

    fn id_ranges(&self) -> Result<Vec<(i64, i64)>, String> {
        decode_ranges(&self.ids)
    }
}

/// Buckets small enough to localise a problem, few enough to keep the checkpoint small.
fn bucket_size_for(count: u64) -> i64 {
    let per_bucket = count.div_ceil(MAX_BUCKETS).max(1);
    (per_bucket.next_power_of_two() as i64).max(MIN_BUCKET_SIZE)
}

fn bucket_hashes(heads: &[(i64, String)], bucket_size: i64) -> BTreeMap<i64, String> {
    let mut hashers: BTreeMap<i64, Sha256> = BTreeMap::new();
    for (id, chain) in heads {
        hashers
            .entry(id / bucket_size)
            .or_default()
            .update(format!("{id}:{chain}\n").as_bytes());
    }
    hashers
        .into_iter()
        .map(|(b, h)| (b, hex::encode(h.finalize())))
        .collect()
}

fn root_of(buckets: &BTreeMap<i64, String>) -> String {
    let text: String = buckets.iter().map(|(b, h)| format!("{b}:{h}\n")).collect();
    sha256_hex(text.as_bytes())
}

/// `1,2,3,5,7,8` → `1-3,5,7-8` (ids ascending).
pub fn encode_ranges(ids: impl IntoIterator<Item = i64>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut run: Option<(i64, i64)> = None;
    let push = |out: &mut Vec<String>, (a, b): (i64, i64)| {
        out.push(if a == b {
            a.to_string()
        } else {
            format!("{a}-{b}")
        })
    };
    for id in ids {
        run = match run {
            Some((a, b)) if id == b + 1 => Some((a, id)),
            Some(r) => {
                push(&mut out, r);
                Some((id, id))
            }
            None => Some((id, id)),
        };
    }
    if let Some(r) = run {
        push(&mut out, r);
    }
    out.join(",")
}

/// The inverse of [`encode_ranges`].
pub fn decode_ranges(s: &str) -> Result<Vec<(i64, i64)>, String> {
    if s.is_empty() {
        return Ok(Vec::new());
    }
    s.split(',')
        .map(|part| {
            let bad = || format!("unreadable id range {part:?} in the checkpoint");
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            let (a, b): (i64, i64) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
            if a > b { Err(bad()) } else { Ok((a, b)) }
        })
        .collect()
}

/// What verifying the store (or one audit) against a checkpoint found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CheckpointReport {
    /// The instant of the checkpoint used.
    pub at: String,
    pub verified: bool,
    /// Whether the checkpoint covers the audit asked about (an audit newer than the checkpoint is not covered:
    /// not a failure).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub covered: Option<bool>,
    /// What failed, for people.
    pub problems: Vec<String>,
    /// Ids in the checkpoint that the store no longer has.
    pub missing_ids: Vec<i64>,
    /// Ids the store has (with history at or before the checkpoint) that the checkpoint does not.
    pub unexpected_ids: Vec<i64>,
    /// Id ranges `[first, last]` whose chain heads differ from the checkpoint.
    pub differing: Vec<[i64; 2]>,
}

impl Store {
    /// The instant a new checkpoint covers (SQL `checkpoint_instant()`, in its own short transaction: writers wait
    /// for it at most `lock_timeout`).
    pub async fn checkpoint_instant(&self) -> Result<DateTime<Utc>, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET LOCAL lock_timeout = '5s'")
            .execute(&mut *tx)
            .await?;
        let at: DateTime<Utc> = sqlx::query_scalar("SELECT checkpoint_instant()")
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(at)
    }

    /// `(id, chain hash of the latest history entry recorded at or before at)` of the audits with ids in
    /// `first..=last` that have a current row and such an entry, ascending ids.
    pub async fn chain_heads(
        &self,
        at: DateTime<Utc>,
        first: i64,
        last: i64,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT a.id, h.chain_hash FROM audits a
             CROSS JOIN LATERAL (
                SELECT x.chain_hash FROM audit_history_all x
                WHERE x.audit_id = a.id AND x.recorded_at <= $1
                ORDER BY x.generation DESC, x.id DESC LIMIT 1) h
             WHERE a.id BETWEEN $2 AND $3
             ORDER BY a.id",
        )
        .bind(at)
        .bind(first)
        .bind(last)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("id")?, r.try_get("chain_hash")?)))
            .collect()
    }

    /// Takes a new signed checkpoint of every chain head.
    pub async fn take_checkpoint(&self, key: &CheckpointKey) -> Result<Checkpoint, StoreError> {
        let at = self.checkpoint_instant().await?;
        let heads = self.chain_heads(at, 1, i64::MAX).await?;
        Ok(Checkpoint::build(at, &heads, key))
    }

    /// Verifies the store against `checkpoint`: every bucket, or (with `audit_id`) the one holding that audit.
    pub async fn verify_checkpoint(
        &self,
        checkpoint: &Checkpoint,
        key: &CheckpointKey,
        audit_id: Option<i64>,
    ) -> Result<CheckpointReport, StoreError> {
        let mut report = CheckpointReport {
            at: checkpoint.at.clone(),
            ..Default::default()
        };
        let checked = checkpoint.check_signature(key).and_then(|()| {
            Ok((
                checkpoint.instant()?,
                checkpoint.id_ranges()?,
                checkpoint.bucket_size.max(1),
            ))
        });
        let (at, ranges, size) = match checked {
            Ok(v) => v,
            Err(problem) => {
                report.problems.push(problem);
                return Ok(report);
            }
        };
        let covers = |id: i64| ranges.iter().any(|&(a, b)| a <= id && id <= b);
        // The id span to recompute: one bucket, or all of them up to the checkpoint's last id.
        let (first, last) = match audit_id {
            Some(id) => {
                report.covered = Some(covers(id));
                let b = id / size;
                (b * size, b * size + size - 1)
            }
            None => (0, checkpoint.max_id),
        };
        let heads = self.chain_heads(at, first.max(1), last).await?;
        let found = bucket_hashes(&heads, size);
        let present: BTreeSet<i64> = heads.iter().map(|h| h.0).collect();
        for &(a, b) in &ranges {
            for id in a.max(first)..=b.min(last) {
                if !present.contains(&id) {
                    report.missing_ids.push(id);
                }
            }
        }
        report.unexpected_ids = present.iter().copied().filter(|&id| !covers(id)).collect();
        let buckets: BTreeSet<i64> = checkpoint
            .buckets
            .keys()
            .chain(found.keys())
            .copied()
            .filter(|b| b * size <= last && b * size + size > first)
            .collect();
        for b in buckets {
            if checkpoint.buckets.get(&b) != found.get(&b) {
                report.differing.push([b * size, b * size + size - 1]);
            }
        }
        for id in &report.missing_ids {
            report.problems.push(format!(
                "audit {id} is in the checkpoint of {} but missing from the store (deleted)",
                checkpoint.at
            ));
        }
        for id in &report.unexpected_ids {
            report.problems.push(format!(
                "audit {id} has history recorded before the checkpoint of {} but the checkpoint does not list it",
                checkpoint.at
            ));
        }
        for [a, b] in &report.differing {
            report.problems.push(format!(
                "the chain heads of audits {a}–{b} differ from the signed checkpoint of {}: a chain there was \
                 rewritten, or an audit removed",
                checkpoint.at
            ));
        }
        report.verified = report.problems.is_empty();
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> CheckpointKey {
        CheckpointKey::new(b"0123456789abcdef0123".to_vec()).unwrap()
    }

    fn heads(ids: &[i64]) -> Vec<(i64, String)> {
        ids.iter()
            .map(|&i| (i, sha256_hex(&i.to_be_bytes())))
            .collect()
    }

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2 (short key) and test case 6 (key longer than the block).
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hex::encode(hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
        assert!(constant_time_eq(b"abc", b"abc") && !constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn ranges_round_trip() {
        let ids = [1, 2, 3, 5, 7, 8, 100];
        let s = encode_ranges(ids);
        assert_eq!(s, "1-3,5,7-8,100");
        assert_eq!(
            decode_ranges(&s).unwrap(),
            [(1, 3), (5, 5), (7, 8), (100, 100)]
        );
        assert_eq!(encode_ranges([]), "");
        assert!(decode_ranges("").unwrap().is_empty());
        assert!(decode_ranges("3-1").is_err() && decode_ranges("x").is_err());
    }

    #[test]
    fn a_signed_checkpoint_verifies_and_any_change_breaks_it() {
        let at = DateTime::from_timestamp_micros(1_780_000_000_123_456).unwrap();
        let cp = Checkpoint::build(at, &heads(&[1, 2, 3, 70, 71]), &key());
        assert_eq!(cp.at, "2026-05-28T20:26:40.123456Z");
        assert_eq!((cp.count, cp.max_id, cp.bucket_size), (5, 71, 64));
        assert_eq!(cp.buckets.len(), 2);
        cp.check_signature(&key()).unwrap();
        // Survives its JSON form.
        let back: Checkpoint = serde_json::from_str(&serde_json::to_string(&cp).unwrap()).unwrap();
        back.check_signature(&key()).unwrap();

        let mut forged = cp.clone();
        forged.ids = "1-3,71".into();
        assert!(
            forged
                .check_signature(&key())
                .unwrap_err()
                .contains("signature")
        );
        let other = CheckpointKey::new(b"another key of 16+ bytes".to_vec()).unwrap();
        assert!(cp.check_signature(&other).unwrap_err().contains("key"));
        assert!(CheckpointKey::new(b"short".to_vec()).is_err());
    }

    #[test]
    fn buckets_stay_few() {
        assert_eq!(bucket_size_for(0), 64);
        assert_eq!(bucket_size_for(100_000), 64);
        assert_eq!(bucket_size_for(1_000_000), 256);
        assert!(1_000_000 / bucket_size_for(1_000_000) as u64 <= MAX_BUCKETS);
    }
}
