// Each handler's description names its pattern, kind, name, module, file and line, and
// `Microservice::from_registry()` serves every handler linked into the binary.
use switchboard::Kind;
use switchboard::prelude::*;

const GET_USER_LINE: u32 = line!() + 3;

#[message_pattern({ cmd = "get_user" })]
pub async fn get_user(id: String) -> String {
    id
}

#[event_pattern("user_created")]
async fn welcome(user: String) {
    let _ = user;
}

#[event_pattern("user_created")]
async fn track(user: String, ctx: Context) {
    let _ = (user, ctx);
}

fn main() {
    let info = GET_USER.info();
    assert_eq!(info.kind(), Kind::Request);
    assert_eq!(info.name(), "get_user");
    assert_eq!(info.route(), r#"{"cmd":"get_user"}"#);
    assert_eq!(
        info.location(),
        format!("{}::get_user ({}:{GET_USER_LINE})", module_path!(), file!())
    );
    assert_eq!(WELCOME.info().kind(), Kind::Event);
    assert_eq!(TRACK.info().name(), "track");

    let router = Microservice::from_registry()
        .into_router()
        .expect("every handler here needs no state");
    let mut routes: Vec<(&str, bool, usize)> = router
        .routes()
        .map(|r| (r.route(), r.has_request_handler(), r.listeners()))
        .collect();
    routes.sort();
    // Every service answers its description and its health too.
    assert_eq!(
        routes,
        [
            ("switchboard.describe", true, 0),
            ("switchboard.health", true, 0),
            ("user_created", false, 2),
            (r#"{"cmd":"get_user"}"#, true, 0)
        ]
    );
}
