//! One shutdown signal fanned out to every loop of a daemon.

use std::future::Future;

use tokio::sync::watch;

/// Resolves for every holder once the daemon must stop. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// Fires when `trigger` completes.
    pub(crate) fn from_future(trigger: impl Future<Output = ()> + Send + 'static) -> Self {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            trigger.await;
            let _ = tx.send(true);
        });
        Self(rx)
    }

    pub(crate) async fn wait(&self) {
        let mut rx = self.0.clone();
        // An error means the trigger task is gone without firing, which only happens when the
        // runtime itself shuts down: treat it as a shutdown too.
        let _ = rx.wait_for(|stop| *stop).await;
    }

    pub(crate) fn is_set(&self) -> bool {
        *self.0.borrow()
    }
}

/// Completes on SIGTERM or SIGINT.
pub async fn os_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
                _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
            }
        }
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "cannot install signal handlers; only Ctrl-C will stop this process");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Aborts the wrapped task when dropped, so per-connection helpers die with their connection.
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
