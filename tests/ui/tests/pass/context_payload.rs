// A type of the user's named `Context` is what its traits say: a `Deserialize` type, so the
// payload, decoded from the message. Nothing is decided by a type's name.
use switchboard::prelude::*;

mod model {
    use switchboard::prelude::*;

    /// The user's own `Context`: a payload.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Context {
        pub tenant: String,
        pub locale: String,
    }
}

#[message_pattern("greet")]
async fn greet(ctx: model::Context) -> String {
    format!("hello {} ({})", ctx.tenant, ctx.locale)
}

// Next to the framework's `Context` (an extractor), under another name.
#[message_pattern("greet_traced")]
async fn greet_traced(meta: switchboard::Context, ctx: model::Context) -> String {
    format!("{} via {}", ctx.tenant, meta.transport())
}

mod shadowing {
    // `Context` here is the user's type, not the prelude's.
    use super::model::Context;
    use switchboard::{Microservice, message_pattern};

    #[message_pattern("locale")]
    pub async fn locale(ctx: Context) -> String {
        ctx.locale
    }

    pub fn serve(service: Microservice) -> Microservice {
        service.handler(LOCALE)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let server = shadowing::serve(Microservice::new().handler(GREET).handler(GREET_TRACED))
        .listen("mem://ui-context-payload")
        .start()
        .await
        .unwrap();
    let client = Client::connect("mem://ui-context-payload").await.unwrap();
    let ctx = model::Context {
        tenant: "acme".into(),
        locale: "fr".into(),
    };
    assert_eq!(client.send(GREET, &ctx).await.unwrap(), "hello acme (fr)");
    assert_eq!(client.send(GREET_TRACED, &ctx).await.unwrap(), "acme via mem");
    assert_eq!(client.send(shadowing::LOCALE, ctx).await.unwrap(), "fr");
    server.shutdown().await.unwrap();
}
