//! Keeps the store's signed chain-head checkpoints ([`crate::store::checkpoint`]) outside PostgreSQL: the leader
//! takes one every `interval` and writes it to a ConfigMap in the operator's namespace (`latest.json`, the one
//! before it as `previous.json`); every replica's query API reads the latest one to prove an audit against it.
//! Someone who can rewrite the database but not this ConfigMap (or the key's Secret) cannot make a rewrite or a
//! deletion verify. docs/security.md says who can.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tracing::{debug, warn};

use crate::controller::MANAGER;
use crate::runtime::Context;
use crate::store::checkpoint::{Checkpoint, CheckpointKey, CheckpointReport};
use crate::store::{Store, StoreError};

/// The ConfigMap key of the latest checkpoint.
pub const LATEST: &str = "latest.json";
/// The ConfigMap key of the checkpoint before it.
pub const PREVIOUS: &str = "previous.json";
/// A ConfigMap holds at most 1 MiB; past this the previous checkpoint is not kept.
const CONFIG_MAP_BUDGET: usize = 900 * 1024;

/// Where checkpoints are kept and how they are signed.
#[derive(Debug, Clone)]
pub struct CheckpointConfig {
    /// The operator's namespace.
    pub namespace: String,
    pub config_map: String,
    pub key: CheckpointKey,
    /// How often the leader takes one.
    pub interval: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("the checkpoint in ConfigMap {0} is unreadable: {1}")]
    Unreadable(String, String),
    #[error("the checkpoint does not fit in a ConfigMap ({0} bytes)")]
    TooLarge(usize),
}

impl CheckpointConfig {
    fn api(&self, client: &Client) -> Api<ConfigMap> {
        Api::namespaced(client.clone(), &self.namespace)
    }

    /// The latest checkpoint, if one was written.
    pub async fn load_latest(
        &self,
        client: &Client,
    ) -> Result<Option<Checkpoint>, CheckpointError> {
        let Some(cm) = self.api(client).get_opt(&self.config_map).await? else {
            return Ok(None);
        };
        let Some(text) = cm.data.as_ref().and_then(|d| d.get(LATEST)) else {
            return Ok(None);
        };
        serde_json::from_str(text)
            .map(Some)
            .map_err(|e| CheckpointError::Unreadable(self.config_map.clone(), e.to_string()))
    }

    /// Writes `checkpoint` as the latest, keeping the one it replaces as the previous (when both fit).
    pub async fn save(
        &self,
        client: &Client,
        checkpoint: &Checkpoint,
    ) -> Result<(), CheckpointError> {
        let latest = serde_json::to_string(checkpoint)
            .map_err(|e| CheckpointError::Unreadable(self.config_map.clone(), e.to_string()))?;
        if latest.len() > CONFIG_MAP_BUDGET {
            return Err(CheckpointError::TooLarge(latest.len()));
        }
        let api = self.api(client);
        let previous = api
            .get_opt(&self.config_map)
            .await?
            .and_then(|cm| cm.data)
            .and_then(|mut d| d.remove(LATEST));
        let mut data = BTreeMap::from([(LATEST.to_string(), latest)]);
        if let Some(p) = previous.filter(|p| p.len() + data[LATEST].len() <= CONFIG_MAP_BUDGET) {
            data.insert(PREVIOUS.to_string(), p);
        }
        let cm = json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": self.config_map,
                "labels": { "app.kubernetes.io/managed-by": "datastorage-operator" },
            },
            "data": data,
        });
        api.patch(
            &self.config_map,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&cm),
        )
        .await?;
        Ok(())
    }

    /// Verifies audit `audit_id` (or, with `None`, the whole store) against the latest checkpoint. `Ok(None)`:
    /// no checkpoint was written yet.
    pub async fn verify(
        &self,
        client: &Client,
        store: &Store,
        audit_id: Option<i64>,
    ) -> Result<Option<CheckpointReport>, CheckpointError> {
        let Some(cp) = self.load_latest(client).await? else {
            return Ok(None);
        };
        Ok(Some(
            store.verify_checkpoint(&cp, &self.key, audit_id).await?,
        ))
    }
}

/// The leader's loop: a checkpoint now and every `interval` while the store is writable.
pub async fn run(ctx: Arc<Context>, config: Arc<CheckpointConfig>) {
    let mut tick = tokio::time::interval(config.interval.max(Duration::from_secs(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(rt) = ctx.current_runtime() else {
            continue;
        };
        if rt.writable.is_err() {
            continue;
        }
        match take_and_save(&ctx.client, &rt.store, &config).await {
            Ok(cp) => {
                debug!(at = %cp.at, count = cp.count, root = %cp.root, "checkpoint written");
            }
            Err(e) => {
                warn!(error = %e, "could not write the chain-head checkpoint; retrying at the next interval")
            }
        }
    }
}

/// Takes one checkpoint and writes it (also used by tests to checkpoint at once).
pub async fn take_and_save(
    client: &Client,
    store: &Store,
    config: &CheckpointConfig,
) -> Result<Checkpoint, CheckpointError> {
    let cp = store.take_checkpoint(&config.key).await?;
    config.save(client, &cp).await?;
    Ok(cp)
}

/// What the anchors outside the database say about one audit: its RemediationAudit's `status.chainHash` (when
/// the resource still exists) and the latest signed checkpoint (when checkpoints are configured).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Anchors {
    /// `status.chainHash` of the RemediationAudit with the audit's uid, when it exists and has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_chain_hash: Option<String>,
    /// The resource's chain hash is one of the stored chain's hashes (`None`: no resource to compare with).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_matches: Option<bool>,
    /// The latest checkpoint's verdict (`None`: checkpoints not configured or none taken yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<CheckpointReport>,
    /// What failed, for people.
    pub problems: Vec<String>,
}

impl Anchors {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks audit `id` (uid `uid`, resource `namespace/name`) against the anchors outside the database. A resource
/// that cannot be read is not a failure (it may be gone: TTL, deletion); a configured checkpoint that cannot be
/// read is. The resource's chain hash is looked up in the stored chain with one index probe (not by reading the
/// whole history: a GET pages the history, and a tenant can add generations at will).
pub async fn check_anchors(
    ctx: &Context,
    store: &Store,
    id: i64,
    (namespace, name, uid): (&str, &str, &str),
) -> Anchors {
    let mut anchors = Anchors::default();
    let api: Api<crate::crd::RemediationAudit> = Api::namespaced(ctx.client.clone(), namespace);
    if let Ok(Some(ra)) = api.get_opt(name).await
        && ra.metadata.uid.as_deref() == Some(uid)
        && let Some(h) = ra.status.and_then(|s| s.chain_hash)
    {
        match store.chain_contains(id, &h).await {
            Ok(matches) => {
                if !matches {
                    anchors.problems.push(format!(
                        "RemediationAudit {namespace}/{name} has status.chainHash {h}, which is not in the stored chain"
                    ));
                }
                anchors.resource_matches = Some(matches);
            }
            Err(e) => anchors.problems.push(format!(
                "cannot look up the RemediationAudit's status.chainHash in the stored chain: {e}"
            )),
        }
        anchors.resource_chain_hash = Some(h);
    }
    if let Some(config) = ctx.checkpoint() {
        match config.verify(&ctx.client, store, Some(id)).await {
            Ok(Some(report)) => {
                anchors.problems.extend(report.problems.iter().cloned());
                anchors.checkpoint = Some(report);
            }
            Ok(None) => {}
            Err(e) => anchors
                .problems
                .push(format!("cannot check the signed checkpoint: {e}")),
        }
    }
    anchors
}

/// Whether the latest checkpoint lists audit `id` (for telling "never existed" from "deleted"): `Some(at)` of
/// that checkpoint when it does and its signature holds.
pub async fn listed_in_checkpoint(ctx: &Context, id: i64) -> Option<String> {
    let config = ctx.checkpoint()?;
    let cp = config.load_latest(&ctx.client).await.ok()??;
    cp.check_signature(&config.key).ok()?;
    let ranges = crate::store::checkpoint::decode_ranges(&cp.ids).ok()?;
    ranges
        .iter()
        .any(|&(a, b)| a <= id && id <= b)
        .then_some(cp.at)
}
