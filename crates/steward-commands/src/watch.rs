//! WatchRun: a run's changes and output deltas, while the caller may still see it.

use std::collections::HashMap;
use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use steward_proto::commands::v1::{
    watch_run_response, OutputChunk, OutputStream, Run, WatchRunRequest, WatchRunResponse,
};
use steward_runtime::authn::AdministratorCall;
use steward_runtime::{ApiError, ApiResult};
use tokio::sync::mpsc;
use tonic::Status;

use crate::entity::{output, result, run};
use crate::rules;
use crate::run::{legacy_lengths, output_lengths, run_proto, visible_run, Lengths, Output};
use crate::{caller, State};
use steward_runtime::roles::Permission;

/// How often WatchRun looks for changes made on other replicas.
pub(crate) const WATCH_POLL: Duration = Duration::from_millis(200);

#[allow(clippy::disallowed_methods)] // wall-clock timer on purpose: transport, polling or backoff
pub(crate) async fn watch(
    state: &State,
    call: AdministratorCall,
    req: WatchRunRequest,
) -> ApiResult<WatchStream> {
    let token_principal = call.principal;
    let p = &caller::for_reading(state, &token_principal, Permission::RunsRead).await?;
    let name = req.name.clone();
    visible_run(state, p, &name, Permission::RunsRead).await?;
    let slot = state.watchers.admit(&p.administrator, &name, &state.streams)?;
    let (tx, rx) = mpsc::channel(32);
    let state = state.clone();
    let recheck = Duration::from_secs(state.streams.watch_recheck_secs.max(1));
    tokio::spawn(async move {
        // Held for the stream's life: the watcher counts go back when it ends.
        let _slot = slot;
        let mut watch = Watch { name, sent: HashMap::new(), last: None, legacy: None };
        let mut first = true;
        let mut last_check = tokio::time::Instant::now();
        loop {
            // Access can end while the stream is open (account deleted, deactivated or
            // demoted from Administrator for someone else's run): re-check it, as the caller
            // is now, and end the stream when it is gone.
            if last_check.elapsed() >= recheck {
                last_check = tokio::time::Instant::now();
                let allowed =
                    match caller::for_reading(&state, &token_principal, Permission::RunsRead).await
                    {
                        Ok(current) => {
                            visible_run(&state, &current, &watch.name, Permission::RunsRead)
                                .await
                                .map(|_| ())
                        }
                        Err(err) => Err(err),
                    };
                if let Err(err) = allowed {
                    tracing::info!(run = %watch.name, code = ?err.code(), "watcher no longer allowed");
                    let _ = tx.send(Err(err.into())).await;
                    break;
                }
            }
            match watch.step(&state, first, &tx).await {
                Ok(true) => break,
                Ok(false) => {}
                Err(err) => {
                    let _ = tx.send(Err(err.into())).await;
                    break;
                }
            }
            first = false;
            tokio::select! {
                () = tx.closed() => break,
                () = state.changed.notified() => {}
                () = tokio::time::sleep(WATCH_POLL) => {}
            }
        }
    });
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

/// The WatchRun stream.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchRunResponse, Status>> + Send>>;

/// What one WatchRun stream has sent so far.
struct Watch {
    name: String,
    /// Bytes sent per (system, stream).
    sent: HashMap<(String, i32), usize>,
    last: Option<Run>,
    /// Output an earlier version kept in the result rows, read on the first step (it never
    /// changes).
    legacy: Option<Lengths>,
}

impl Watch {
    /// Sends what changed; `Ok(true)` once the run has finished (or the watcher left).
    ///
    /// Output is read as deltas: one aggregate query tells which streams grew, and only their
    /// new rows are read, one stream at a time (output stored by earlier versions in the result
    /// row is sent before the stream's first row).
    async fn step(
        &mut self,
        state: &State,
        first: bool,
        tx: &mpsc::Sender<Result<WatchRunResponse, Status>>,
    ) -> ApiResult<bool> {
        let db = &state.db;
        let Some(run) = run::Entity::find_by_id(self.name.clone()).one(db).await? else {
            return Err(ApiError::NotFound(self.name.clone()));
        };
        let terminal = rules::is_terminal(run.state);
        let snapshot = run_proto(db, run, Output::None).await?;
        let send =
            |event| async { tx.send(Ok(WatchRunResponse { event: Some(event) })).await.is_err() };
        if first && send(watch_run_response::Event::Run(snapshot.clone())).await {
            return Ok(true);
        }
        // One stream at a time: at most one stream's output (its 1 MiB bound) is held at once.
        // Taken for the step and put back after the output (any other end of the step ends
        // the watch).
        let legacy = match self.legacy.take() {
            Some(legacy) => legacy,
            None => legacy_lengths(db, &self.name, None).await?,
        };
        let lengths = output_lengths(db, &self.name, None, &legacy).await?;
        let has_legacy = |key: &(String, i32)| legacy.contains_key(key);
        for ((system, stream), end) in lengths {
            let sent = self.sent.get(&(system.clone(), stream)).copied().unwrap_or(0);
            if end <= sent {
                continue;
            }
            let mut pieces: Vec<(i64, Vec<u8>)> = Vec::new();
            if sent == 0 && has_legacy(&(system.clone(), stream)) {
                // Output an earlier version kept in the result row, then the rows after it.
                let legacy: Option<Vec<u8>> = result::Entity::find()
                    .select_only()
                    .column(if stream == OutputStream::Stderr as i32 {
                        result::Column::Stderr
                    } else {
                        result::Column::Stdout
                    })
                    .filter(result::Column::Run.eq(&self.name))
                    .filter(result::Column::System.eq(&system))
                    .into_tuple()
                    .one(db)
                    .await?;
                pieces.extend(legacy.filter(|data| !data.is_empty()).map(|data| (0, data)));
            }
            let after = i64::try_from(sent).unwrap_or(i64::MAX);
            let rows = output::Entity::find()
                .filter(output::Column::Run.eq(&self.name))
                .filter(output::Column::System.eq(&system))
                .filter(output::Column::Stream.eq(stream))
                .filter(output::Column::EndOffset.gt(after))
                .order_by_asc(output::Column::Offset)
                .all(db)
                .await?;
            pieces.extend(rows.into_iter().map(|row| (row.offset, row.data)));
            for (offset, data) in pieces {
                let sent = self.sent.entry((system.clone(), stream)).or_insert(0);
                let (fresh, _) = rules::fresh_output(*sent, offset, &data, rules::MAX_OUTPUT_BYTES);
                if fresh.is_empty() {
                    continue;
                }
                let chunk = OutputChunk {
                    run: self.name.clone(),
                    system: system.clone(),
                    stream,
                    data: fresh.to_vec(),
                    offset: i64::try_from(*sent).unwrap_or(i64::MAX),
                };
                *sent += fresh.len();
                if send(watch_run_response::Event::Output(chunk)).await {
                    return Ok(true);
                }
            }
        }
        self.legacy = Some(legacy);
        let changed = self.last.as_ref() != Some(&snapshot);
        if ((!first && changed) || (first && terminal))
            && send(watch_run_response::Event::Run(snapshot.clone())).await
        {
            return Ok(true);
        }
        self.last = Some(snapshot);
        Ok(terminal)
    }
}
