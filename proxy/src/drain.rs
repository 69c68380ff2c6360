//! Graceful drain: one signal that listeners and connections watch.

use tokio::sync::watch;

#[derive(Debug)]
pub struct Drain {
    tx: watch::Sender<bool>,
}

impl Default for Drain {
    fn default() -> Self {
        Drain {
            tx: watch::channel(false).0,
        }
    }
}

impl Drain {
    pub fn start(&self) {
        self.tx.send_replace(true);
    }

    pub fn is_draining(&self) -> bool {
        *self.tx.borrow()
    }

    pub fn watch(&self) -> Watch {
        Watch(self.tx.subscribe())
    }
}

#[derive(Debug, Clone)]
pub struct Watch(watch::Receiver<bool>);

impl Watch {
    pub fn is_signaled(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once draining has begun.
    pub async fn signaled(&mut self) {
        let _ = self.0.wait_for(|d| *d).await;
    }
}
