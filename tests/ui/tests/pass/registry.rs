// Handlers are registered with their name, module, file and line.
use switchboard::prelude::*;
use switchboard::{Handler, HandlerKind, Registry};

const GET_USER_LINE: u32 = line!() + 3;

#[message_pattern(cmd = "get_user")]
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
    let entry = get_user.entry();
    assert_eq!(entry.kind, HandlerKind::Message);
    assert_eq!(entry.name, "get_user");
    assert_eq!(entry.module, module_path!());
    assert!(entry.file.ends_with("registry.rs"), "{}", entry.file);
    assert_eq!(entry.line, GET_USER_LINE);
    assert_eq!(welcome.entry().kind, HandlerKind::Event);

    let registry = Registry::collect();
    let names: Vec<&str> = registry.entries().iter().map(|e| e.name).collect();
    assert_eq!(names.len(), 3, "{names:?}");
    for name in ["get_user", "welcome", "track"] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    assert!(registry.entries().iter().any(|e| std::ptr::eq(*e, get_user.entry())));
    assert!(registry.routes().is_ok());
    let _ = track;
}
