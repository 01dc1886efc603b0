//! Write-through off the request path: a bounded queue (full means the job is dropped and counted, never queued
//! without bound) drained by one worker that embeds a batch of questions at once, and that also deletes expired
//! entries every minute.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use uuid::Uuid;

use super::{Conversation, Retention, Scope, SemanticCache, queries};

/// Questions embedded together.
const BATCH: usize = 16;
const SWEEP_EVERY: Duration = Duration::from_secs(60);
const SWEEP_BATCH: i64 = 5_000;

/// One answer to store.
#[derive(Debug)]
pub struct WriteJob {
    pub key_set_id: Uuid,
    pub instance: String,
    pub conversation: Conversation,
    pub response: String,
    pub model: Option<String>,
    pub retention: Retention,
}

pub(super) struct WriteQueue(mpsc::Sender<WriteJob>);

impl WriteQueue {
    pub(super) fn new(capacity: usize) -> (Self, mpsc::Receiver<WriteJob>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (Self(tx), rx)
    }

    pub(super) fn offer(&self, job: WriteJob) -> bool {
        self.0.try_send(job).is_ok()
    }
}

pub(super) async fn run(cache: Arc<SemanticCache>, mut jobs: mpsc::Receiver<WriteJob>) {
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        tokio::select! {
            received = jobs.recv_many(&mut batch, BATCH) => {
                if received == 0 {
                    return;
                }
                write(&cache, &mut batch).await;
            }
            _ = sweep.tick() => delete_expired(&cache).await,
        }
    }
}

async fn write(cache: &SemanticCache, batch: &mut Vec<WriteJob>) {
    let embeddings = match &cache.embedder {
        Some(embedder) => {
            let questions: Vec<String> = batch.iter().map(|job| job.conversation.question.clone()).collect();
            match embedder.embed(&questions).await {
                Ok(vectors) if vectors.len() == batch.len() => Some(vectors),
                Ok(_) => None,
                Err(e) => {
                    // Still stored: the exact path finds them.
                    tracing::warn!(error = %e, "cache write-through could not embed; storing for exact matches only");
                    None
                }
            }
        }
        None => None,
    };
    for (i, job) in batch.drain(..).enumerate() {
        let embedding = embeddings.as_ref().and_then(|v| v.get(i)).map(Vec::as_slice);
        let scope = Scope { key_set_id: job.key_set_id, instance: &job.instance };
        let stored = cache
            .store_embedded(scope, &job.conversation, embedding, &job.response, job.model.as_deref(), job.retention)
            .await;
        match stored {
            Ok(()) => cache.metrics.cache_write("stored"),
            Err(e) => {
                // A key set revoked meanwhile (foreign key) or a database hiccup: the request was answered anyway.
                tracing::debug!(error = %e, "cache write-through failed");
                cache.metrics.cache_write("failed");
            }
        }
    }
}

async fn delete_expired(cache: &SemanticCache) {
    loop {
        match queries::delete_expired(&cache.pool, SWEEP_BATCH).await {
            Ok(n) if n as i64 >= SWEEP_BATCH => continue,
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %e, "could not delete expired cache entries");
                return;
            }
        }
    }
}
