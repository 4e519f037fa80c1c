//! What the broker says of a consumer group: its state and its members,
//! each with the partitions it was assigned (decoded from the classic
//! consumer protocol's assignment).

use rdkafka::consumer::Consumer;
use std::time::Duration;

/// A consumer group as the broker describes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GroupDescription {
    /// Stable, PreparingRebalance, CompletingRebalance, Empty, Dead.
    pub state: String,
    /// Its members.
    pub members: Vec<GroupMember>,
}

/// One member of a group.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GroupMember {
    /// The member id the coordinator gave (a static member's starts with its
    /// instance id).
    pub member_id: String,
    /// Its client id (`orders-projector-<pid>`).
    pub client_id: String,
    /// The host it connects from, as the broker sees it.
    pub host: String,
    /// Its partitions of the topic asked about.
    pub partitions: Vec<i32>,
}

/// Describes `group`, with each member's partitions of `topic`. Blocking:
/// call it off the runtime's workers.
pub fn describe_group<C: rdkafka::consumer::ConsumerContext>(
    client: &impl Consumer<C>,
    group: &str,
    topic: &str,
    timeout: Duration,
) -> Result<GroupDescription, rdkafka::error::KafkaError> {
    let list = client.fetch_group_list(Some(group), timeout)?;
    let Some(info) = list.groups().iter().find(|g| g.name() == group) else {
        return Ok(GroupDescription {
            state: "Dead".into(),
            members: Vec::new(),
        });
    };
    let members = info
        .members()
        .iter()
        .map(|m| GroupMember {
            member_id: m.id().to_owned(),
            client_id: m.client_id().to_owned(),
            host: m.client_host().trim_start_matches('/').to_owned(),
            partitions: m
                .assignment()
                .map(|a| partitions_of(a, topic))
                .unwrap_or_default(),
        })
        .collect();
    Ok(GroupDescription {
        state: info.state().to_owned(),
        members,
    })
}

/// The partitions of `topic` in a classic consumer protocol assignment
/// (version i16, [topic: string i16-sized, [partition i32]], user data);
/// a malformed one gives none.
pub fn partitions_of(assignment: &[u8], topic: &str) -> Vec<i32> {
    let mut r = Reader(assignment);
    let mut out = Vec::new();
    let parsed = (|| {
        r.i16()?;
        let topics = r.i32()?;
        for _ in 0..topics.max(0) {
            let len = usize::try_from(r.i16()?).ok()?;
            let name = r.take(len)?;
            let n = r.i32()?;
            for _ in 0..n.max(0) {
                let p = r.i32()?;
                if name == topic.as_bytes() {
                    out.push(p);
                }
            }
        }
        Some(())
    })();
    match parsed {
        Some(()) => {
            out.sort_unstable();
            out
        }
        None => Vec::new(),
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn i16(&mut self) -> Option<i16> {
        Some(i16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(topics: &[(&str, &[i32])]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(1i16.to_be_bytes());
        b.extend((topics.len() as i32).to_be_bytes());
        for (t, ps) in topics {
            b.extend((t.len() as i16).to_be_bytes());
            b.extend(t.as_bytes());
            b.extend((ps.len() as i32).to_be_bytes());
            for p in *ps {
                b.extend(p.to_be_bytes());
            }
        }
        b.extend((-1i32).to_be_bytes());
        b
    }

    #[test]
    fn an_assignment_gives_the_partitions_of_the_topic_asked_about() {
        let a = assignment(&[("orders.inventory", &[0]), ("orders", &[5, 1, 3])]);
        assert_eq!(partitions_of(&a, "orders"), vec![1, 3, 5]);
        assert_eq!(partitions_of(&a, "orders.inventory"), vec![0]);
        assert_eq!(partitions_of(&a, "other"), Vec::<i32>::new());
    }

    #[test]
    fn a_truncated_assignment_gives_none_rather_than_a_part() {
        let a = assignment(&[("orders", &[0, 1, 2])]);
        assert_eq!(
            partitions_of(&a[..a.len() - 9], "orders"),
            Vec::<i32>::new()
        );
        assert_eq!(partitions_of(&[], "orders"), Vec::<i32>::new());
    }
}
