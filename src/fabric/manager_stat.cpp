// The fabric manager's stat snapshot: every channel's counters, live stream connections and
// device attachments, sent with the control segment.

#include "fabric/manager_impl.hpp"

namespace interpart::fabric {

void Manager::Impl::handle_stat(Conn& c) {
  for (std::uint32_t li = 0; li < ctl.listener_count(); ++li)  // (stat reads each listener's counts from its row)
    if (ctl.listener(li).state.load(std::memory_order_relaxed) == 1) (void)count_waiting(li);
  // Every configured channel, and the stream slots that carry a connection now.
  std::vector<std::uint32_t> shown;
  for (std::uint32_t i = 0; i < ctl.channel_count(); ++i)
    if (!ctl.is_stream(i) || (channels[i].live && !channels[i].reserved)) shown.push_back(i);
  std::vector<std::byte> out(sizeof(wire::StatReply) + shown.size() * sizeof(wire::ChannelStat) +
                             ctl.attachment_count() * sizeof(wire::AttachmentStat));
  wire::StatReply rep{};
  rep.h = wire::header(wire::kStatReply, out.size());
  rep.count = static_cast<std::uint32_t>(shown.size());
  rep.attachments = ctl.attachment_count();
  std::memcpy(out.data(), &rep, sizeof rep);
  for (std::size_t k = 0; k < shown.size(); ++k) {
    const std::uint32_t i = shown[k];
    const bool stream = ctl.is_stream(i);  // a slot's earlier connections are not this one's
    wire::ChannelStat s{};
    const table::ChannelState st = ctl.channel_state(i);
    s.channel = i;
    s.generation = st.generation;
    s.side_state[0] = static_cast<std::uint8_t>(st.side[0]);
    s.side_state[1] = static_cast<std::uint8_t>(st.side[1]);
    s.pid[0] = ctl.channel(i).pid[0].load(std::memory_order_relaxed);
    s.pid[1] = ctl.channel(i).pid[1].load(std::memory_order_relaxed);
    const table::ChannelEntry& e = ctl.channel(i);
    for (int d = 0; d < 2; ++d) {
      const DirectionCounters c = ring_counters(i, d);
      auto& o = s.direction[d];
      o.sent_messages = (stream ? 0 : e.retired_sent_messages[d]) + c.sent_messages;
      o.sent_bytes = (stream ? 0 : e.retired_sent_bytes[d]) + c.sent_bytes;
      o.received_messages = (stream ? 0 : e.retired_received_messages[d]) + c.received_messages;
      o.received_bytes = (stream ? 0 : e.retired_received_bytes[d]) + c.received_bytes;
      o.queued_bytes = c.queued_bytes;
      for (int b = 0; b < ring::kLatencyBuckets; ++b) o.latency[b] = (stream ? 0 : retired_latency[i][d][b]) + c.latency[b];
    }
    std::memcpy(out.data() + sizeof rep + k * sizeof s, &s, sizeof s);
  }
  std::byte* att_out = out.data() + sizeof rep + shown.size() * sizeof(wire::ChannelStat);
  for (std::uint32_t i = 0; i < ctl.attachment_count(); ++i) {
    wire::AttachmentStat a{};
    const table::AttachmentState st = ctl.attachment_state(i);
    a.attachment = i;
    a.generation = st.generation;
    a.client_state = static_cast<std::uint8_t>(st.client);
    a.driver_state = static_cast<std::uint8_t>(st.driver);
    a.client_pid = ctl.attachment(i).client_pid.load(std::memory_order_relaxed);
    a.driver_pid = ctl.attachment(i).driver_pid.load(std::memory_order_relaxed);
    if (attachments[i].live) {
      // Counters the partitions write: reported, never trusted for anything else.
      const table::DeviceEntry& d = ctl.device(ctl.attachment(i).device);
      for (std::uint32_t q = 0; q < d.queues; ++q) {
        const blk::QueueView v = blk::queue_view(attachments[i].map.data(), q, d.depth);
        const auto& k = v.ctl->counters;
        a.submitted += v.ctl->sq_tail.count.load(std::memory_order_relaxed);
        a.completed += v.ctl->cq_tail.count.load(std::memory_order_relaxed);
        // (A VM's queues are the guest's, up to 32768 deep: the driver keeps both counts itself.)
        const std::uint32_t diff = v.ctl->sq_tail.value.load(std::memory_order_relaxed) - v.ctl->cq_tail.value.load(std::memory_order_relaxed);
        a.in_flight += (ctl.attachment(i).flags & table::kAttachVm) ? std::min<std::uint32_t>(diff, 32768) : diff % (d.depth + 1);
        a.reads += k.reads.load(std::memory_order_relaxed);
        a.writes += k.writes.load(std::memory_order_relaxed);
        a.others += k.others.load(std::memory_order_relaxed);
        a.errors += k.errors.load(std::memory_order_relaxed);
        a.bytes_read += k.bytes_read.load(std::memory_order_relaxed);
        a.bytes_written += k.bytes_written.load(std::memory_order_relaxed);
        for (int b = 0; b < blk::kLatencyBuckets; ++b) a.latency[b] += k.latency[b].load(std::memory_order_relaxed);
      }
    }
    std::memcpy(att_out + i * sizeof a, &a, sizeof a);
  }
  // With the read-only control segment, so that the reader can name what it counts.
  const int fd = control_ro.get();
  (void)wire::send_message(c.sock.get(), out.data(), out.size(), &fd, 1);
}

// Block devices

}  // namespace interpart::fabric
