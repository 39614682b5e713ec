// The Logs page (being built).
import { h } from "../ui.js";

export default {
  title: "Logs",
  nav: true,
  render(root) {
    root.append(h("p", {}, "Logs: not built yet"));
  },
};
