//! A small authoritative DNS server over UDP on 127.0.0.1, answering SRV and A queries from a
//! table the test changes while it runs.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, Metadata, ResponseCode};
use hickory_proto::rr::rdata::{A, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// One SRV record: `priority weight port target`.
#[derive(Debug, Clone)]
pub struct Srv {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    pub target: String,
}

pub fn srv(priority: u16, port: u16, target: &str) -> Srv {
    Srv {
        priority,
        weight: 10,
        port,
        target: target.to_owned(),
    }
}

#[derive(Debug)]
struct Zone {
    srv: HashMap<String, Vec<Srv>>,
    hosts: HashMap<String, Ipv4Addr>,
    ttl: u32,
    /// Whether SRV answers carry their targets' A records in the additional section.
    glue: bool,
    /// Answer every query with SERVFAIL.
    fail: bool,
    /// Hold address queries until this many names are asked for (0: answer at once).
    hold: usize,
}

/// The server; stops when dropped.
pub struct Responder {
    addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    queries: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Names are compared lower-case, without the root's dot.
fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl Responder {
    pub async fn start() -> Responder {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind a UDP socket");
        let addr = socket.local_addr().unwrap();
        let zone = Arc::new(Mutex::new(Zone {
            srv: HashMap::new(),
            hosts: HashMap::new(),
            ttl: 1,
            glue: true,
            fail: false,
            hold: 0,
        }));
        let queries = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(serve(socket, zone.clone(), queries.clone()));
        Responder {
            addr,
            zone,
            queries,
            task,
        }
    }

    /// Where to send queries.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the SRV records of `name` (an empty list removes the name: NXDOMAIN).
    pub fn set_srv(&self, name: &str, records: Vec<Srv>) {
        let mut zone = self.zone.lock().unwrap();
        match records.is_empty() {
            true => zone.srv.remove(&key(name)),
            false => zone.srv.insert(key(name), records),
        };
    }

    /// The A record of `name`.
    pub fn set_host(&self, name: &str, ip: Ipv4Addr) {
        self.zone.lock().unwrap().hosts.insert(key(name), ip);
    }

    /// The TTL of every record (1 s at first).
    pub fn set_ttl(&self, ttl: u32) {
        self.zone.lock().unwrap().ttl = ttl;
    }

    /// Whether SRV answers carry the targets' addresses (they do at first).
    pub fn set_glue(&self, glue: bool) {
        self.zone.lock().unwrap().glue = glue;
    }

    /// Whether every query fails with SERVFAIL.
    pub fn set_failing(&self, fail: bool) {
        self.zone.lock().unwrap().fail = fail;
    }

    /// Holds every A query unanswered until A records of `names` different names are asked
    /// for, then answers them all: a resolver that asks one after another gets no answer.
    pub fn hold_addresses(&self, names: usize) {
        self.zone.lock().unwrap().hold = names;
    }

    /// How many queries were answered.
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

async fn serve(socket: UdpSocket, zone: Arc<Mutex<Zone>>, queries: Arc<AtomicUsize>) {
    let mut buf = vec![0u8; 4096];
    let mut held: Vec<(Message, SocketAddr)> = Vec::new();
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            return;
        };
        let Ok(request) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        let hold = zone.lock().unwrap().hold;
        let address = request.queries.first().is_some_and(|q| q.query_type() == RecordType::A);
        let ready = if hold > 0 && address {
            held.push((request, from));
            let names: std::collections::HashSet<String> = held
                .iter()
                .filter_map(|(m, _)| m.queries.first().map(|q| key(&q.name().to_string())))
                .collect();
            match names.len() >= hold {
                true => std::mem::take(&mut held),
                false => continue,
            }
        } else {
            vec![(request, from)]
        };
        for (request, from) in ready {
            let response = answer(&request, &zone.lock().unwrap());
            queries.fetch_add(1, Ordering::SeqCst);
            let bytes = response.to_vec().expect("encode a DNS response");
            let _ = socket.send_to(&bytes, from).await;
        }
    }
}

fn answer(request: &Message, zone: &Zone) -> Message {
    let mut response = Message::response(request.metadata.id, request.metadata.op_code);
    response.metadata = Metadata::response_from_request(&request.metadata);
    response.metadata.message_type = MessageType::Response;
    response.metadata.authoritative = true;
    response.queries = request.queries.clone();
    if zone.fail {
        response.metadata.response_code = ResponseCode::ServFail;
        return response;
    }
    let Some(query) = request.queries.first() else {
        response.metadata.response_code = ResponseCode::FormErr;
        return response;
    };
    let name = key(&query.name().to_string());
    let known = zone.srv.contains_key(&name) || zone.hosts.contains_key(&name);
    match query.query_type() {
        RecordType::SRV => {
            for record in zone.srv.get(&name).into_iter().flatten() {
                let target = Name::from_str(&format!("{}.", key(&record.target))).unwrap();
                let data = SRV::new(record.priority, record.weight, record.port, target.clone());
                response
                    .answers
                    .push(Record::from_rdata(query.name().clone(), zone.ttl, RData::SRV(data)));
                if let (true, Some(ip)) = (zone.glue, zone.hosts.get(&key(&record.target))) {
                    response
                        .additionals
                        .push(Record::from_rdata(target, zone.ttl, RData::A(A(*ip))));
                }
            }
        }
        RecordType::A => {
            if let Some(ip) = zone.hosts.get(&name) {
                response
                    .answers
                    .push(Record::from_rdata(query.name().clone(), zone.ttl, RData::A(A(*ip))));
            }
        }
        _ => {}
    }
    if !known {
        response.metadata.response_code = ResponseCode::NXDomain;
    }
    response
}
