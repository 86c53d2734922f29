// The descriptor `GET_USER` is a constant next to the function (`Users::FIND` next to a
// group's method): another item of that name clashes with it, and only the clash is
// reported, at the handler's name. (A type of the same name as the function does not clash:
// see pass/name_next_to_type.rs.)
mod with_const {
    use switchboard::prelude::*;

    pub const GET_USER: &str = "get_user";

    #[message_pattern({ cmd = "get_user" })]
    pub async fn get_user(id: String) -> String {
        id
    }
}

mod in_group {
    use switchboard::prelude::*;

    pub struct Users;

    impl Users {
        pub const FIND: &str = "find";
    }

    #[handlers]
    impl Users {
        #[message_pattern({ cmd = "find_user" })]
        pub async fn find(&self, id: String) -> String {
            id
        }
    }
}

fn main() {}
