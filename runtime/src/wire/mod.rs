//! What goes on the wire: NestJS's microservice protocol, and Switchboard's own MessagePack
//! codec between Switchboard peers.

pub mod msgpack;
pub mod nestjs;
