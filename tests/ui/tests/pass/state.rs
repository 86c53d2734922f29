// `with_state(app)`: handlers take `State<App>` for all of it, or `State<Part>` for a part
// that `#[derive(FromRef)]` (or an `impl FromRef`) provides; groups take state too.
use std::sync::Arc;

use switchboard::prelude::*;

#[derive(Clone)]
pub struct Db(Arc<str>);

#[derive(Clone)]
pub struct Mailer;

#[derive(Clone)]
pub struct Greeting(&'static str);

#[derive(Clone, FromRef)]
pub struct App {
    db: Db,
    mailer: Mailer,
    #[from_ref(skip)]
    other_db: Db,
}

impl FromRef<App> for Greeting {
    fn from_ref(_: &App) -> Self {
        Greeting("hello")
    }
}

#[message_pattern("whole")]
async fn whole(State(app): State<App>) -> String {
    format!("{}/{}", app.db.0, app.other_db.0)
}

#[message_pattern("parts")]
async fn parts(name: String, State(db): State<Db>, State(_m): State<Mailer>, State(g): State<Greeting>) -> String {
    format!("{} {name} from {}", g.0, db.0)
}

#[message_pattern("stateless")]
async fn stateless() -> u8 {
    1
}

pub struct Users;

#[handlers]
impl Users {
    #[message_pattern("users.db")]
    async fn db(&self, State(db): State<Db>) -> String {
        db.0.to_string()
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let app = App {
        db: Db("main".into()),
        mailer: Mailer,
        other_db: Db("other".into()),
    };
    let server = Microservice::new()
        .with_state(app)
        .handler(WHOLE)
        .handler(PARTS)
        .handler(STATELESS)
        .group(Users)
        .listen("mem://ui-state")
        .start()
        .await
        .unwrap();
    let client = Client::connect("mem://ui-state").await.unwrap();
    assert_eq!(client.send(WHOLE, ()).await.unwrap(), "main/other");
    assert_eq!(
        client.send(PARTS, "Ada".to_string()).await.unwrap(),
        "hello Ada from main"
    );
    assert_eq!(client.send(STATELESS, ()).await.unwrap(), 1);
    assert_eq!(client.send(Users::DB, ()).await.unwrap(), "main");
    server.shutdown().await.unwrap();
}
