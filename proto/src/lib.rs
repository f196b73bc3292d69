//! Generated gRPC/protobuf code for every Switchyard protocol, one module per versioned
//! package. This crate holds no logic: conversions to domain types live in the crates that
//! own those types.

pub mod common {
    pub mod v1 {
        tonic::include_proto!("switchyard.common.v1");
    }
}

pub mod agent {
    pub mod v1 {
        tonic::include_proto!("switchyard.agent.v1");
    }
}

pub mod node {
    pub mod v1 {
        tonic::include_proto!("switchyard.node.v1");
    }
}

pub mod routing {
    pub mod v1 {
        tonic::include_proto!("switchyard.routing.v1");
    }
}

pub mod operator {
    pub mod v1 {
        tonic::include_proto!("switchyard.operator.v1");
    }
}

pub mod cell {
    pub mod v1 {
        tonic::include_proto!("switchyard.cell.v1");
    }
}

pub mod raft {
    pub mod v1 {
        tonic::include_proto!("switchyard.raft.v1");
    }
}

/// Largest gRPC message any Switchyard service accepts or sends, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;
