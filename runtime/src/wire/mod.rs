//! What goes on the wire: NestJS's microservice protocol.

pub mod nestjs;
