//! The counting collector's service: it walks each export's protobuf to count its spans,
//! without decoding them into messages. Under load its cost stays far below a real
//! collector's, which runs on another machine; here it shares the benchmark's cores.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{BoxFuture, Service, StdError, http};
use tonic::{Request, Response, Status};

/// `opentelemetry.proto.collector.trace.v1.TraceService`, adding each export's span count to
/// a counter.
#[derive(Clone)]
pub(crate) struct Counting(pub(crate) Arc<AtomicU64>);

impl tonic::server::NamedService for Counting {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

impl<B> Service<http::Request<B>> for Counting
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let counter = self.0.clone();
        Box::pin(async move {
            if req.uri().path() != "/opentelemetry.proto.collector.trace.v1.TraceService/Export" {
                return Ok(Status::unimplemented("only Export").into_http());
            }
            let mut grpc = tonic::server::Grpc::new(Count);
            Ok(grpc.unary(Add(counter), req).await)
        })
    }
}

struct Add(Arc<AtomicU64>);

impl tonic::server::UnaryService<u64> for Add {
    type Response = ();
    type Future = std::future::Ready<Result<Response<()>, Status>>;

    fn call(&mut self, request: Request<u64>) -> Self::Future {
        self.0.fetch_add(request.into_inner(), Ordering::Relaxed);
        std::future::ready(Ok(Response::new(())))
    }
}

/// Reads an `ExportTraceServiceRequest` as its span count; writes the empty response.
#[derive(Clone, Copy)]
struct Count;

impl Codec for Count {
    type Encode = ();
    type Decode = u64;
    type Encoder = Count;
    type Decoder = Count;

    fn encoder(&mut self) -> Count {
        Count
    }

    fn decoder(&mut self) -> Count {
        Count
    }
}

impl Encoder for Count {
    type Item = ();
    type Error = Status;

    fn encode(&mut self, _: (), _: &mut EncodeBuf<'_>) -> Result<(), Status> {
        Ok(())
    }
}

impl Decoder for Count {
    type Item = u64;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<u64>, Status> {
        use bytes::Buf;
        let body = src.copy_to_bytes(src.remaining());
        spans(&body)
            .map(Some)
            .ok_or_else(|| Status::invalid_argument("not an ExportTraceServiceRequest"))
    }
}

/// The spans in an export: fields 1 (resource spans) → 2 (scope spans) → 2 (spans).
pub(crate) fn spans(request: &[u8]) -> Option<u64> {
    let mut n = 0;
    for resource in fields(request, 1) {
        for scope in fields(resource?, 2) {
            for span in fields(scope?, 2) {
                span?;
                n += 1;
            }
        }
    }
    Some(n)
}

/// The length-delimited fields numbered `number` of a message; an item is `None` where the
/// message is malformed (and the walk stops).
fn fields(mut message: &[u8], number: u64) -> impl Iterator<Item = Option<&[u8]>> {
    std::iter::from_fn(move || {
        loop {
            if message.is_empty() {
                return None;
            }
            let Some(tag) = varint(&mut message) else {
                message = &[];
                return Some(None);
            };
            let len = match tag & 7 {
                0 => match varint(&mut message) {
                    Some(_) => continue,
                    None => None,
                },
                1 => Some(8),
                2 => varint(&mut message),
                5 => Some(4),
                _ => None,
            };
            let Some(len) = len
                .and_then(|l| usize::try_from(l).ok())
                .filter(|&l| l <= message.len())
            else {
                message = &[];
                return Some(None);
            };
            let (value, rest) = message.split_at(len);
            message = rest;
            if tag >> 3 == number && tag & 7 == 2 {
                return Some(Some(value));
            }
        }
    })
}

fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for (i, &b) in buf.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            *buf = &buf[i + 1..];
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use prost::Message;

    #[test]
    fn counts_the_spans_of_every_scope_and_resource() {
        let scope = |n: usize| ScopeSpans {
            spans: (0..n)
                .map(|i| Span {
                    name: format!("span {i}"),
                    start_time_unix_nano: u64::MAX,
                    ..Span::default()
                })
                .collect(),
            ..ScopeSpans::default()
        };
        let request = ExportTraceServiceRequest {
            resource_spans: vec![
                ResourceSpans {
                    scope_spans: vec![scope(3), scope(0), scope(200)],
                    schema_url: "x".into(),
                    ..ResourceSpans::default()
                },
                ResourceSpans {
                    scope_spans: vec![scope(1)],
                    ..ResourceSpans::default()
                },
            ],
        };
        let bytes = request.encode_to_vec();
        assert_eq!(spans(&bytes), Some(204));
        assert_eq!(spans(&[]), Some(0));
        assert_eq!(spans(&bytes[..bytes.len() - 1]), None);
        assert_eq!(spans(&[0x0a, 0xff]), None);
    }
}
