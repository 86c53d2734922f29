//! NestJS's microservice protocol, as every transport speaks it (see the crate's
//! `docs/nestjs-wire.md`): its packets, how a reply becomes packets, and how a client
//! matches reply packets to the calls it has in flight.
//!
//! - `packet`: requests, events and replies, decoded without copying payloads and encoded
//!   in NestJS's key order;
//! - `scan`: where a JSON value ends, sixteen bytes at a time;
//! - `steps`: a reply as the packets a server sends for it;
//! - `pending`: a client's calls in flight, by id.

// Each transport uses its share of the protocol; a build with only some of them leaves the rest idle.
#![cfg_attr(not(feature = "tcp"), allow(dead_code))]

pub(crate) mod packet;
#[cfg_attr(not(all(feature = "tcp", feature = "amqp")), allow(dead_code))]
pub(crate) mod pending;
mod scan;
pub(crate) mod steps;
