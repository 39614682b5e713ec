// The Query page (being built).
import { h } from "../ui.js";

export default {
  title: "Query",
  nav: true,
  render(root) {
    root.append(h("p", {}, "Query: not built yet"));
  },
};
