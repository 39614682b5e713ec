// The Overview page (being built).
import { h } from "../ui.js";

export default {
  title: "Overview",
  nav: true,
  render(root) {
    root.append(h("p", {}, "Overview: not built yet"));
  },
};
