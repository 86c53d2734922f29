// A descriptor is exactly as visible as its function, so a private handler may take and
// return private types (the compiler refuses a trait impl of a type more visible than the
// types in it), and no visibility lint fires, for free functions and groups alike.
#![deny(warnings)]

use switchboard::prelude::*;

#[derive(Serialize, Deserialize)]
struct Private(u32);

#[message_pattern("private")]
async fn private(x: Private) -> Private {
    x
}

pub mod inner {
    use switchboard::prelude::*;

    #[derive(Serialize, Deserialize)]
    pub(super) struct Semi(pub u32);

    #[message_pattern("semi")]
    pub(super) async fn semi(x: Semi) -> Semi {
        x
    }

    #[message_pattern("in_path")]
    pub(in crate::inner) async fn in_path(x: u32) -> u32 {
        x
    }

    #[message_pattern("self_vis")]
    pub(self) async fn self_vis(x: u32) -> u32 {
        x
    }

    pub fn serve(service: Microservice) -> Microservice {
        service.handler(IN_PATH).handler(SELF_VIS)
    }
}

pub struct Users;

#[derive(Serialize, Deserialize)]
struct Hidden(u32);

#[handlers]
impl Users {
    #[message_pattern("hidden")]
    async fn hidden(&self, x: Hidden) -> Hidden {
        x
    }

    #[message_pattern("public")]
    pub async fn public(&self, x: u32) -> u32 {
        x
    }
}

fn main() {
    let service = Microservice::new().handler(PRIVATE).handler(inner::SEMI).group(Users);
    let _ = inner::serve(service);
    let _ = (Users::HIDDEN, Users::PUBLIC);

    fn local() {
        #[message_pattern("local")]
        async fn local(x: u32) -> u32 {
            x
        }
        let _ = Microservice::new().handler(LOCAL);
    }
    local();
}
