//! What Sesame withstands: hostile or broken input and resource abuse, each a
//! regression test for a defect that once got through. One module per part under
//! attack, in `hostile/`.
#[path = "hostile/agent.rs"]
mod agent;
#[path = "hostile/relay.rs"]
mod relay;
#[path = "hostile/sessions.rs"]
mod sessions;
