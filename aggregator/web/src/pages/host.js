// The Host page (being built).
import { h } from "../ui.js";

export default {
  title: "Host",
  nav: false,
  render(root) {
    root.append(h("p", {}, "Host: not built yet"));
  },
};
