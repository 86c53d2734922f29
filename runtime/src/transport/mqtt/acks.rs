//! The server's acknowledgements of QoS 1/2 messages. MQTT 3.1.1 (§4.6) wants them in
//! arrival order, so a handled message is acknowledged once every earlier one has been too.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rumqttc::{AsyncClient, Publish, QoS};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// An acknowledgement to send: the connection it belongs to, the packet id, the QoS.
type Ack = (u64, u16, QoS);

/// QoS 1/2 messages of the current connection, in arrival order, waiting for their handlers.
pub(super) struct Acks {
    queue: Mutex<Queue>,
    /// Bumped on every connection loss: an ack for a message of an older connection would
    /// acknowledge whatever the broker numbered the same on the new one.
    epoch: Arc<AtomicU64>,
}

struct Queue {
    next: u64,
    /// (sequence number, packet id, QoS, handled).
    waiting: VecDeque<(u64, u16, QoS, bool)>,
    /// To the task that hands acks to rumqttc; `None` once closed.
    out: Option<mpsc::UnboundedSender<Ack>>,
}

impl Acks {
    /// The queue, and the task sending its acks through `client`.
    pub fn new(client: AsyncClient) -> (Acks, JoinHandle<()>) {
        let epoch = Arc::new(AtomicU64::new(0));
        let (tx, rx) = mpsc::unbounded_channel();
        let sender = tokio::spawn(send_acks(client, epoch.clone(), rx));
        let acks = Acks {
            queue: Mutex::new(Queue {
                next: 0,
                waiting: VecDeque::new(),
                out: Some(tx),
            }),
            epoch,
        };
        (acks, sender)
    }

    /// Registers a message as it arrives; a QoS 1/2 one gets a sequence number, which
    /// [`done`](Self::done) takes once it has been handled.
    pub fn arrived(&self, p: &Publish) -> Option<u64> {
        if p.qos == QoS::AtMostOnce {
            return None;
        }
        let mut q = self.queue.lock().expect("ack queue lock");
        q.next += 1;
        let seq = q.next;
        q.waiting.push_back((seq, p.pkid, p.qos, false));
        Some(seq)
    }

    /// Handling message `seq` has begun: the ticket marks it handled when dropped.
    pub fn ticket(self: &Arc<Self>, seq: u64) -> Ticket {
        Ticket {
            seq,
            acks: self.clone(),
        }
    }

    /// Message `seq` has been handled: acknowledges it and the handled ones after it, once
    /// every earlier one has been.
    fn done(&self, seq: u64) {
        let mut q = self.queue.lock().expect("ack queue lock");
        // Sequence numbers only grow, so a binary search finds it (if still current).
        if let Ok(i) = q.waiting.binary_search_by_key(&seq, |w| w.0) {
            q.waiting[i].3 = true;
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        while let Some(&(_, pkid, qos, true)) = q.waiting.front() {
            q.waiting.pop_front();
            if let Some(out) = &q.out {
                let _ = out.send((epoch, pkid, qos));
            }
        }
    }

    /// The connection is gone: the broker sends what was not acknowledged again on a kept
    /// session, numbered anew.
    pub fn lost(&self) {
        let mut q = self.queue.lock().expect("ack queue lock");
        q.waiting.clear();
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// No more acks: the sending task ends once it has handed over those queued.
    pub fn close(&self) {
        self.queue.lock().expect("ack queue lock").out = None;
    }
}

/// Hands acknowledgements to rumqttc, dropping those of a connection that has gone.
async fn send_acks(client: AsyncClient, epoch: Arc<AtomicU64>, mut rx: mpsc::UnboundedReceiver<Ack>) {
    while let Some((at, pkid, qos)) = rx.recv().await {
        if epoch.load(Ordering::Acquire) != at {
            continue;
        }
        let mut ack = Publish::new("", qos, Bytes::new());
        ack.pkid = pkid;
        if client.ack(&ack).await.is_err() {
            return;
        }
    }
}

/// Marks a message handled when dropped, whether its handling finished or panicked, so
/// that the acknowledgements after it are not held up.
pub(super) struct Ticket {
    seq: u64,
    acks: Arc<Acks>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.acks.done(self.seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(pkid: u16, qos: QoS) -> Publish {
        let mut p = Publish::new("t", qos, Bytes::new());
        p.pkid = pkid;
        p
    }

    #[tokio::test]
    async fn acks_go_in_arrival_order_and_not_across_connections() {
        let (client, _eventloop) = AsyncClient::new(rumqttc::MqttOptions::new("t", "localhost", 1883), 8);
        let (acks, _sender) = Acks::new(client);
        let (tx, mut rx) = mpsc::unbounded_channel();
        acks.queue.lock().unwrap().out = Some(tx);
        assert_eq!(acks.arrived(&publish(0, QoS::AtMostOnce)), None);
        let a = acks.arrived(&publish(7, QoS::AtLeastOnce)).unwrap();
        let b = acks.arrived(&publish(8, QoS::AtLeastOnce)).unwrap();
        let c = acks.arrived(&publish(9, QoS::ExactlyOnce)).unwrap();
        acks.done(b);
        assert!(rx.try_recv().is_err(), "8 waits for 7");
        acks.done(a);
        assert_eq!(rx.try_recv().unwrap(), (0, 7, QoS::AtLeastOnce));
        assert_eq!(rx.try_recv().unwrap(), (0, 8, QoS::AtLeastOnce));
        acks.lost();
        acks.done(c);
        assert!(
            rx.try_recv().is_err(),
            "a message of a lost connection is not acknowledged"
        );
        let d = acks.arrived(&publish(1, QoS::AtLeastOnce)).unwrap();
        acks.done(d);
        assert_eq!(rx.try_recv().unwrap(), (1, 1, QoS::AtLeastOnce));
    }
}
