//! The writer loop: one thread, one [`Event`] at a time into the reconciler, and the effects
//! handed to the tasks around it. Nothing here blocks on anything but the next event: answers
//! that read the maps are finished by a reader on tokio's blocking pool, resolutions and purges
//! go to threads of their own and come back as events, the state file is written by a task.

use std::sync::{Arc, mpsc as std_mpsc};

use tokio::sync::{mpsc, oneshot, watch};

use crate::{
    api::Response,
    dataplane::{MapOps, MapReader, PurgeJob, sweep::SweepPolicy},
    error::ErrorKind,
    reconcile::{Answer, Effects, Event, FlowQuery, ProbeTarget, Reconciler, ResolveJob},
    state::State,
};

/// Where the writer hands off what it does not do itself.
pub struct Tasks {
    /// The config file `lb reload` re-reads (none: the agent runs without one).
    pub config: Option<std::path::PathBuf>,
    /// Where a file read for `lb reload` comes back, as `Event::Reload`.
    pub events: mpsc::WeakSender<Event>,
    /// Finishes read answers (counters, the conntrack walk) on its own map handle.
    pub reader: Arc<dyn MapReader + Send + Sync>,
    /// Runs resolutions; each comes back as `Event::Resolved`.
    pub resolve: std_mpsc::Sender<ResolveJob>,
    /// Runs flow purges (each comes back as `Event::Purged`) and `lb flows flush`.
    pub purge: std_mpsc::Sender<PurgeWork>,
    /// The desired state to save and its config digest, latest first (the saver writes it).
    pub save: watch::Sender<Option<(State, String)>>,
    /// The probes the desired state wants (the prober follows them).
    pub probes: watch::Sender<Vec<ProbeTarget>>,
    /// The announce table's writer (`crate::announce`); `None`: no announcing.
    pub announce: Option<std::sync::mpsc::Sender<crate::announce::Order>>,
    /// The flow sweeper's policy (`None` until the initial state is applied).
    pub sweep: watch::Sender<Option<Arc<SweepPolicy>>>,
    /// Where blocking reads run.
    pub runtime: tokio::runtime::Handle,
}

impl Tasks {
    /// Tells the announcer what to announce now (the reconciler's rule); a send to an
    /// announcer that has stopped (a plain stop withdrew everything) is dropped.
    pub fn announce<M: MapOps>(&self, rec: &Reconciler<M>) {
        if let Some(a) = &self.announce {
            let _ = a.send(crate::announce::Order::Want(rec.announced()));
        }
    }
}

/// What the purger thread does: the reconciler's purges, and the flows `lb flows flush`
/// selects, answered to the client directly.
pub enum PurgeWork {
    Job(PurgeJob),
    Flush(FlowQuery, oneshot::Sender<Response>),
}

/// How many of a reload's changes the log names one by one.
const LOGGED_CHANGES: usize = 20;

/// Runs the writer until [`Event::Stop`] (or until every event sender is gone), and gives the
/// reconciler back. `digest` is the config digest of the current desired state; a successful
/// reload replaces it. Work queued before the loop (by `start`) is dispatched first.
pub fn run<M: MapOps>(
    mut rec: Reconciler<M>,
    mut events: mpsc::Receiver<Event>,
    tasks: &Tasks,
    mut digest: String,
) -> Reconciler<M> {
    let fx = rec.flush();
    dispatch(&rec, fx, tasks, &mut digest);
    while let Some(ev) = events.blocking_recv() {
        if matches!(ev, Event::Stop) {
            break;
        }
        // `lb reload`: the file is read and parsed off the writer, and comes back as a reload.
        let mut ev = match ev {
            Event::Api(crate::api::Request::Reload, tx) => {
                read_for_reload(tasks, tx);
                continue;
            }
            ev => ev,
        };
        // The reload rule: a file unchanged since it was applied changes nothing, so the changes
        // made with `lb` since then stay; a changed file wins, and what it replaces is logged.
        let mut replaced = Vec::new();
        if let Event::Reload { state, tag, reply } = &mut ev {
            if *tag == digest {
                tracing::info!(
                    "config file unchanged since it was applied: nothing to reload (changes made with lb since then are kept)"
                );
                if let Some(tx) = reply.take() {
                    let _ = tx.send(Response::Reloaded {
                        changed: false,
                        changes: Vec::new(),
                    });
                }
                continue;
            }
            replaced = rec.state().differences(state);
            // The first few by name, the rest as a count: one line per change, not per entry
            // (a reload of 10k services would otherwise log 10k lines; `lb reload` lists all).
            for change in replaced.iter().take(LOGGED_CHANGES) {
                tracing::info!(%change, "the changed config file replaces the running state here");
            }
            if replaced.len() > LOGGED_CHANGES {
                tracing::info!(
                    more = replaced.len() - LOGGED_CHANGES,
                    "the changed config file replaces more of the running state (lb reload lists every change)"
                );
            }
        }
        let mut fx = rec.handle_event(ev);
        // `lb reload`'s answer lists what the file replaced.
        if let Some((_, Answer::Now(Response::Reloaded { changes, .. }))) = &mut fx.reply {
            *changes = replaced;
        }
        dispatch(&rec, fx, tasks, &mut digest);
    }
    rec
}

/// Reads and parses the config file for `lb reload` on the blocking pool; the outcome comes
/// back to the writer as an event (a reload, or the refusal to send).
fn read_for_reload(tasks: &Tasks, tx: oneshot::Sender<Response>) {
    let Some(path) = tasks.config.clone() else {
        let _ = tx.send(Response::error(
            ErrorKind::Invalid,
            "the agent runs without --config: there is no file to reload",
        ));
        return;
    };
    let events = tasks.events.clone();
    tasks.runtime.spawn_blocking(move || {
        let ev = match super::load_config(Some(&path)) {
            Ok((c, digest)) => Event::Reload {
                state: Box::new(State::from_config(&c)),
                tag: digest,
                reply: Some(tx),
            },
            Err(e) => Event::ReloadRefused(format!("{e:#}; nothing changed"), tx),
        };
        if let Some(events) = events.upgrade() {
            let _ = events.blocking_send(ev);
        }
    });
}

fn dispatch<M: MapOps>(rec: &Reconciler<M>, fx: Effects, tasks: &Tasks, digest: &mut String) {
    let Effects {
        reply,
        state_changed,
        sweep_changed,
        backend_ids_changed,
        rotation_changed,
        reload,
        resolve,
        purge,
    } = fx;
    if sweep_changed && !state_changed {
        tasks.sweep.send_replace(Some(Arc::new(rec.sweep_policy())));
    }
    match reload {
        Some(Ok(d)) => {
            *digest = d;
            tracing::info!("config reloaded");
        }
        Some(Err(e)) => tracing::error!(error = %e, "config reload refused; nothing changed"),
        None => {}
    }
    if state_changed {
        tasks
            .save
            .send_replace(Some((rec.state().clone(), digest.clone())));
        tasks.probes.send_replace(rec.wanted_probes());
        tasks.sweep.send_replace(Some(Arc::new(rec.sweep_policy())));
        tasks.announce(rec);
        super::memory::give_back();
    } else {
        if backend_ids_changed {
            tasks.probes.send_replace(rec.wanted_probes());
        }
        if rotation_changed {
            tasks.announce(rec);
        }
    }
    if let Some((tx, answer)) = reply {
        match answer {
            Answer::Now(r) => {
                let _ = tx.send(r);
            }
            Answer::Read(p) => {
                let reader = tasks.reader.clone();
                tasks.runtime.spawn_blocking(move || {
                    let r = p.finish(&*reader).unwrap_or_else(|e| {
                        Response::error(ErrorKind::Failed, format!("reading the maps: {e}"))
                    });
                    let _ = tx.send(r);
                });
            }
            Answer::Flush(q) => {
                if let Err(std_mpsc::SendError(PurgeWork::Flush(_, tx))) =
                    tasks.purge.send(PurgeWork::Flush(q, tx))
                {
                    let _ = tx.send(Response::error(
                        ErrorKind::Unavailable,
                        "the purger is gone; no flow was flushed",
                    ));
                }
            }
        }
    }
    if let Some(job) = resolve
        && tasks.resolve.send(job).is_err()
    {
        tracing::error!("the resolver is gone; next hops are no longer refreshed");
    }
    if let Some(job) = purge
        && tasks.purge.send(PurgeWork::Job(job)).is_err()
    {
        tracing::error!("the purger is gone; flows of removed backends are not purged");
    }
}
