// AudioWorklet: float32 microphone samples (the context runs at 16 kHz) -> s16le frames of 200 ms.
class PcmFramer extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.frameSamples = (options.processorOptions && options.processorOptions.frameSamples) || 3200;
    this.frame = new Int16Array(this.frameSamples);
    this.filled = 0;
  }

  process(inputs) {
    const channels = inputs[0];
    if (!channels || channels.length === 0) return true;
    const n = channels[0].length;
    for (let i = 0; i < n; i++) {
      let sum = 0;  // average the channels: the endpoint takes mono
      for (let c = 0; c < channels.length; c++) sum += channels[c][i];
      const x = Math.max(-1, Math.min(1, sum / channels.length));
      this.frame[this.filled++] = x < 0 ? x * 32768 : x * 32767;
      if (this.filled === this.frameSamples) {
        const out = this.frame.buffer;  // Int16Array is little-endian on every platform browsers run on
        this.port.postMessage(out, [out]);
        this.frame = new Int16Array(this.frameSamples);
        this.filled = 0;
      }
    }
    return true;
  }
}

registerProcessor("pcm-framer", PcmFramer);
