//! Kubernetes Events, through kube-runtime's [`Recorder`] (which aggregates repeats of one event into a series),
//! rate limited so that a flood of audits cannot flood etcd with events: a token bucket of [`RATE`] events per
//! second (burst [`BURST`]) and at most [`IN_FLIGHT`] publications at a time, sent in the background so a
//! reconcile never waits for one. What is over budget is dropped and counted in
//! `datastorage_events_dropped_total`.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use prometheus::IntCounter;
use tokio::sync::Semaphore;
use tracing::debug;

/// Sustained events per second, all objects together.
pub const RATE: f64 = 20.0;
/// Events allowed at once after a quiet period.
pub const BURST: f64 = 100.0;
/// Publications in flight at most.
pub const IN_FLIGHT: usize = 8;
/// The `note` of an event is at most 1 kB (the API's limit); longer messages are cut at a character boundary.
const NOTE_MAX: usize = 1024;

/// One event to publish about one object.
pub struct Notice {
    pub warning: bool,
    /// PascalCase, e.g. `Persisted`, `Rejected`.
    pub reason: String,
    /// PascalCase, what the operator did, e.g. `Store`.
    pub action: &'static str,
    pub note: String,
}

pub struct EventSink {
    recorder: Recorder,
    bucket: Mutex<Bucket>,
    in_flight: Arc<Semaphore>,
    dropped: IntCounter,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// Takes one token if there is one (refilled at `RATE` per second up to `BURST`).
    fn take(&mut self, now: Instant) -> bool {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * RATE;
        self.tokens = (self.tokens + refill).min(BURST);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl EventSink {
    /// `controller`: the reporting controller's name; `instance`: this replica (its pod name).
    pub fn new(
        client: Client,
        controller: &str,
        instance: Option<String>,
        dropped: IntCounter,
    ) -> Self {
        let reporter = Reporter {
            controller: controller.to_string(),
            instance,
        };
        Self {
            recorder: Recorder::new(client, reporter),
            bucket: Mutex::new(Bucket {
                tokens: BURST,
                at: Instant::now(),
            }),
            in_flight: Arc::new(Semaphore::new(IN_FLIGHT)),
            dropped,
        }
    }

    /// Publishes `notice` about `regarding` in the background, unless over budget.
    pub fn emit(&self, regarding: ObjectReference, notice: Notice) {
        let allowed = self
            .bucket
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(Instant::now());
        let permit = allowed
            .then(|| self.in_flight.clone().try_acquire_owned().ok())
            .flatten();
        let Some(permit) = permit else {
            self.dropped.inc();
            return;
        };
        let recorder = self.recorder.clone();
        let event = Event {
            type_: if notice.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: notice.reason,
            note: Some(truncate(notice.note, NOTE_MAX)),
            action: notice.action.to_string(),
            secondary: None,
        };
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&event, &regarding).await {
                debug!(error = %e, "publishing an event failed");
            }
            drop(permit);
        });
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = Bucket {
            tokens: BURST,
            at: t0,
        };
        let burst = (0..1000).filter(|_| b.take(t0)).count();
        assert_eq!(burst, BURST as usize);
        let later = t0 + Duration::from_secs(1);
        let refilled = (0..1000).filter(|_| b.take(later)).count();
        assert_eq!(refilled, RATE as usize);
    }

    #[test]
    fn notes_are_cut_at_a_character_boundary() {
        assert_eq!(truncate("é".repeat(600), NOTE_MAX).len(), NOTE_MAX);
        assert_eq!(truncate("short".into(), NOTE_MAX), "short");
        assert_eq!(truncate("aé".into(), 2), "a");
    }
}
