//! What goes on the wire: JSON as JavaScript writes it, and NestJS's microservice protocol.

pub mod json;
pub mod nestjs;
