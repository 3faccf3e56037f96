// GStreamer side of the camera app (gst_capture.h): pipeline, appsink callbacks, bus.
#include "gst_capture.h"

#include <gst/app/gstappsink.h>
#include <gst/gst.h>
#include <gst/video/video.h>

#include <algorithm>
#include <atomic>
#include <regex>

namespace omnisift_live {

struct GstCapture::Impl {
  GstElement* pipeline = nullptr;
  GstBus* bus = nullptr;
  ChunkQueue* queue = nullptr;
  mutable std::mutex mu;                 // the assembler: fed from two streaming threads
  std::unique_ptr<ChunkAssembler> assembler;
  int64_t captured = 0;
  int64_t limit = -1;                    // chunks to capture (-1: no limit)
  size_t frame_bytes = 0;
  std::vector<uint8_t> packed;           // a padded frame repacked (video thread only)
  std::atomic<int64_t> last_sample_ns{0};

  void touch() { last_sample_ns = Clock::now().time_since_epoch().count(); }

  // Hand whole chunks to the queue (under `mu`).
  void flush() {
    for (LiveChunk& c : assembler->take_ready()) {
      if (limit >= 0 && captured >= limit) return;
      ++captured;
      queue->put(std::move(c));
    }
  }

  static double seconds(GstClockTime t) { return static_cast<double>(t) / GST_SECOND; }

  static GstFlowReturn on_video(GstAppSink* sink, gpointer data) {
    auto* self = static_cast<Impl*>(data);
    GstSample* sample = gst_app_sink_pull_sample(sink);
    if (!sample) return GST_FLOW_EOS;
    GstBuffer* buffer = gst_sample_get_buffer(sample);
    GstMapInfo map;
    GstVideoInfo info;
    if (buffer && GST_BUFFER_PTS_IS_VALID(buffer) && gst_video_info_from_caps(&info, gst_sample_get_caps(sample)) &&
        gst_buffer_map(buffer, &map, GST_MAP_READ)) {
      // RGB rows are padded to 4 bytes: repack when the stride is wider than the row
      const size_t row = static_cast<size_t>(GST_VIDEO_INFO_WIDTH(&info)) * 3;
      const size_t stride = static_cast<size_t>(GST_VIDEO_INFO_PLANE_STRIDE(&info, 0));
      const size_t rows = static_cast<size_t>(GST_VIDEO_INFO_HEIGHT(&info));
      if (row * rows == self->frame_bytes && map.size >= stride * (rows - 1) + row) {
        const uint8_t* rgb = map.data;
        if (stride != row) {
          self->packed.resize(self->frame_bytes);
          for (size_t y = 0; y < rows; ++y) std::copy_n(map.data + y * stride, row, self->packed.data() + y * row);
          rgb = self->packed.data();
        }
        std::lock_guard<std::mutex> lock(self->mu);
        self->assembler->video(seconds(GST_BUFFER_PTS(buffer)), rgb);
        self->flush();
      }
      gst_buffer_unmap(buffer, &map);
    }
    gst_sample_unref(sample);
    self->touch();
    return GST_FLOW_OK;
  }

  static GstFlowReturn on_audio(GstAppSink* sink, gpointer data) {
    auto* self = static_cast<Impl*>(data);
    GstSample* sample = gst_app_sink_pull_sample(sink);
    if (!sample) return GST_FLOW_EOS;
    GstBuffer* buffer = gst_sample_get_buffer(sample);
    GstMapInfo map;
    if (buffer && GST_BUFFER_PTS_IS_VALID(buffer) && gst_buffer_map(buffer, &map, GST_MAP_READ)) {
      std::lock_guard<std::mutex> lock(self->mu);
      self->assembler->audio(seconds(GST_BUFFER_PTS(buffer)), reinterpret_cast<const float*>(map.data),
                             map.size / sizeof(float));
      self->flush();
      gst_buffer_unmap(buffer, &map);
    }
    gst_sample_unref(sample);
    self->touch();
    return GST_FLOW_OK;
  }

  ~Impl() {
    if (pipeline) {
      gst_element_set_state(pipeline, GST_STATE_NULL);
      gst_object_unref(pipeline);
    }
    if (bus) gst_object_unref(bus);
  }
};

namespace {

constexpr int kMelLookahead = 40;   // samples past a chunk its log-mel window needs (preprocess.h)

bool names_branch(const std::string& description, const char* name) {
  // `audio.` as a pad reference: at a word start, followed by a space or the end
  return std::regex_search(description, std::regex(std::string("(^|[\\s!])") + name + "\\.(\\s|$)"));
}

void connect(GstElement* pipeline, const char* name, GstFlowReturn (*fn)(GstAppSink*, gpointer), void* impl) {
  GstElement* sink = gst_bin_get_by_name(GST_BIN(pipeline), name);
  GstAppSinkCallbacks callbacks{};
  callbacks.new_sample = fn;
  gst_app_sink_set_callbacks(GST_APP_SINK(sink), &callbacks, impl, nullptr);
  gst_object_unref(sink);
}

}  // namespace

GstCapture::GstCapture(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
GstCapture::~GstCapture() { stop(); }

std::unique_ptr<GstCapture> GstCapture::start(const GstOptions& o, ChunkQueue& queue, std::string& error) {
  gst_init(nullptr, nullptr);
  const bool audio = names_branch(o.description, "audio");
  if (!names_branch(o.description, "video")) {
    error = "the --gst pipeline never links into `video.`; end its video branch with `! video.` "
            "(e.g. \"videotestsrc is-live=true ! video.\")";
    return nullptr;
  }
  // sync=true: a file plays at its real pace, as a camera would; async=false: a branch that never
  // gets data (a file without audio) does not hold the pipeline in preroll
  const std::string sink_opts = " sync=true async=false max-buffers=4 drop=false emit-signals=false";
  std::string desc = o.description + "  videoconvert name=video ! queue ! videoscale ! video/x-raw,format=RGB,width=" +
                     std::to_string(o.width) + ",height=" + std::to_string(o.height) +
                     ",pixel-aspect-ratio=1/1 ! appsink name=omnisift_video" + sink_opts;
  if (audio)
    desc += "  audioconvert name=audio ! queue ! audioresample ! audio/x-raw,format=F32LE,rate=16000,channels=1,"
            "layout=interleaved ! appsink name=omnisift_audio" + sink_opts;
  GError* err = nullptr;
  GstElement* pipeline = gst_parse_launch(desc.c_str(), &err);
  if (err) {
    error = std::string("the --gst pipeline does not parse: ") + err->message +
            " (check the element names: gst-inspect-1.0 NAME; try it with gst-launch-1.0)";
    g_error_free(err);
    if (pipeline) gst_object_unref(pipeline);
    return nullptr;
  }
  auto impl = std::make_unique<Impl>();
  impl->pipeline = pipeline;
  impl->bus = gst_element_get_bus(pipeline);
  impl->queue = &queue;
  impl->frame_bytes = static_cast<size_t>(o.height) * o.width * 3;
  impl->assembler = std::make_unique<ChunkAssembler>(impl->frame_bytes, kMelLookahead);
  if (!audio) impl->assembler->set_no_audio();
  impl->touch();
  connect(pipeline, "omnisift_video", &Impl::on_video, impl.get());
  if (audio) connect(pipeline, "omnisift_audio", &Impl::on_audio, impl.get());
  if (gst_element_set_state(pipeline, GST_STATE_PLAYING) == GST_STATE_CHANGE_FAILURE) {
    std::string why;
    GstMessage* msg = gst_bus_pop_filtered(impl->bus, GST_MESSAGE_ERROR);
    if (msg) {
      GError* e = nullptr;
      gst_message_parse_error(msg, &e, nullptr);
      why = std::string(": ") + GST_OBJECT_NAME(GST_MESSAGE_SRC(msg)) + ": " + (e ? e->message : "");
      if (e) g_error_free(e);
      gst_message_unref(msg);
    }
    error = "the --gst pipeline does not start" + why + " (check the source: device, file or URL)";
    return nullptr;
  }
  std::unique_ptr<GstCapture> out(new GstCapture(std::move(impl)));
  out->has_audio_branch_ = audio;
  return out;
}

GstEvent GstCapture::poll(std::string& message) {
  GstMessage* msg = gst_bus_pop_filtered(impl_->bus, static_cast<GstMessageType>(GST_MESSAGE_ERROR | GST_MESSAGE_EOS));
  if (!msg) return GstEvent::kNone;
  GstEvent event = GstEvent::kEnded;
  if (GST_MESSAGE_TYPE(msg) == GST_MESSAGE_ERROR) {
    GError* e = nullptr;
    gst_message_parse_error(msg, &e, nullptr);
    message = std::string(GST_OBJECT_NAME(GST_MESSAGE_SRC(msg))) + ": " + (e ? e->message : "unknown error");
    if (e) g_error_free(e);
    event = GstEvent::kError;
  }
  gst_message_unref(msg);
  return event;
}

bool GstCapture::video_ended() const {
  GstElement* sink = gst_bin_get_by_name(GST_BIN(impl_->pipeline), "omnisift_video");
  const bool eos = gst_app_sink_is_eos(GST_APP_SINK(sink));
  gst_object_unref(sink);
  return eos;
}

double GstCapture::idle_seconds() const {
  const int64_t now = Clock::now().time_since_epoch().count();
  return std::chrono::duration<double>(Clock::duration(now - impl_->last_sample_ns.load())).count();
}
int64_t GstCapture::captured() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->captured;
}
void GstCapture::set_no_audio() {
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->assembler->set_no_audio();
  impl_->flush();
}
bool GstCapture::got_audio() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->assembler->got_audio();
}
double GstCapture::video_seconds() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->assembler->video_seconds();
}
bool GstCapture::has_partial() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->assembler->has_partial();
}
bool GstCapture::started() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->assembler->started();
}
void GstCapture::stop_after(int64_t chunks) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->limit = chunks;
}
void GstCapture::stop() {
  if (impl_ && impl_->pipeline) gst_element_set_state(impl_->pipeline, GST_STATE_NULL);
}

}  // namespace omnisift_live
