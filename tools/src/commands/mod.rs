//! One module per subcommand.

pub mod commit;
pub mod create;
pub mod diff;
pub mod export;
pub mod fsck;
pub mod gc;
pub mod history;
pub mod images;
pub mod import;
pub mod inspect;
pub mod layers;
pub mod load;
pub mod login;
pub mod mount;
pub mod ps;
pub mod pull;
pub mod push;
pub mod rm;
pub mod rmi;
pub mod save;
pub mod serve;
pub mod tag;
pub mod umount;
